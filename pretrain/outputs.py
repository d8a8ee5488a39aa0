"""Files of a ``voco_pretrain`` run: folder checks, log, metrics and final exports (the resumable
state is in :mod:`nnunet_voco.pretrain.run_state`).

Layout of ``$nnUNet_results/<Dataset>/VoCo__<plans>__<configuration>/`` (DESIGN.md section 5):
``config.json``, ``training_log_<timestamp>.txt``, ``metrics.jsonl``, ``progress.png``,
``checkpoint_latest.pth`` (every ``--save_every`` steps), ``checkpoint_final.pth``,
``voco_encoder.pth`` and ``pretrained_network.pth``.
"""
from __future__ import annotations

import datetime
import json
import os
import sys

from tqdm import tqdm

from nnunet_voco import __version__
from nnunet_voco.artifacts import ENCODER_FILE, ENCODER_META_FILE, PRETRAINED_NETWORK_FILE, write_encoder
from nnunet_voco.checkpoint import save_atomic, to_plain, transfer_encoder
from nnunet_voco.errors import UserInputError
from nnunet_voco.pretrain.run_state import FINAL, LATEST, plain_keys
from nnunet_voco.storage import folder_lock
from nnunet_voco.storage.atomic_files import write_files_atomic, write_json_atomic
from nnunet_voco.storage.disk_errors import DiskWriteError, disk_write_error, remove_quietly

LOCK_FILE = ".voco.lock"
RESUME_ADVICE = "the files written before are intact; free space there (or pass -o elsewhere) and resume with --c"


def claim_output_folder(folder: str, config, ctx) -> tuple[str | None, folder_lock.FolderLock | None]:
    """Lock ``folder`` for this run (rank 0 holds the lock), check it, and clear a killed save's temp files.

    Returns:
        ``(checkpoint to resume from or None, the lock on rank 0 / None elsewhere)``; release the lock
        when the run ends (:func:`nnunet_voco.storage.folder_lock.release_all` also does).

    Raises:
        FolderBusy: another run holds the folder (with or without ``--c``).
        DiskWriteError: the folder cannot be written (read-only, full).
        UserInputError: see :func:`prepare_output_folder`.
    """
    lock, error = None, None
    if ctx.is_main:
        try:
            lock = folder_lock.acquire(os.path.join(folder, LOCK_FILE), "voco_pretrain", folder)
        except (folder_lock.FolderBusy, DiskWriteError) as e:
            error = e
    (failed,) = ctx.any_rank(error is not None)  # every rank stops, not only rank 0
    if error is not None:
        raise error
    if failed:
        raise UserInputError(f"rank 0 could not lock {folder} (see its message)")
    try:
        resume_from = prepare_output_folder(folder, config)
        if ctx.is_main:
            remove_stale_temp_files(folder)  # left by a process killed while saving
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    ctx.barrier()
    return resume_from, lock


def prepare_output_folder(folder: str, config) -> str | None:
    """Check ``folder`` against this run; returns the checkpoint to resume from (or None).

    ``--c`` without a checkpoint starts a new run (as nnU-Net's ``--c`` does), so one resume command
    works whenever a job is killed, also before its first checkpoint; the loop logs a warning.

    Raises:
        UserInputError: the folder holds a run of another configuration (without ``--overwrite``),
            or holds a run but neither ``--c`` nor ``--overwrite`` was given.
    """
    cfg_file = os.path.join(folder, "config.json")
    checkpoint = next((os.path.join(folder, f) for f in (LATEST, FINAL) if os.path.isfile(os.path.join(folder, f))), None)
    if os.path.isfile(cfg_file) and not config.overwrite:
        with open(cfg_file) as f:
            previous = json.load(f).get("identity", {})
        for key, value in config.identity().items():
            if key in previous and previous[key] != value:
                raise UserInputError(
                    f"{folder} holds a run with {identity_flag(key, previous[key])} but this run has "
                    f"{identity_flag(key, value)}; pass the same flags to continue it, -o to use another folder, "
                    f"or --overwrite to replace that run"
                )
    if config.continue_training:
        return checkpoint
    if checkpoint is not None and not config.overwrite:
        raise UserInputError(f"{folder} already holds a run ({os.path.basename(checkpoint)}); pass --c to continue "
                             f"it or --overwrite to start over")
    return None


_SHORT_FLAGS = {"datasets": "-d", "plans": "-p", "configuration": "-c"}
_DERIVED = {"crop_size": "derived from the data", "grid": "derived from the data", "head_dim": "the preset's default",
            "swin_feature_size": "the encoder's default"}


def identity_flag(key: str, value) -> str:
    """An identity field as the user typed it: ``--crop_size 16 64 64``, or ``crop_size derived from the data
    (no --crop_size)`` for a value left to the run."""
    flag = _SHORT_FLAGS.get(key, f"--{key}")
    if value is None:
        return f"{key} {_DERIVED.get(key, 'not given')} (no {flag})"
    return f"{flag} {' '.join(map(str, value)) if isinstance(value, (list, tuple)) else value}"


def remove_stale_temp_files(folder: str) -> list[str]:
    """Delete temporary files that a killed save left behind (``<file>.<random>.tmp``, ``<file>.tmp``)."""
    ours = (LATEST, FINAL, ENCODER_FILE, ENCODER_META_FILE, PRETRAINED_NETWORK_FILE, "config.json", "metrics.jsonl")
    stale = [f for f in os.listdir(folder) if f.endswith(".tmp") and f.startswith(tuple(n + "." for n in ours))]
    stale += [f for f in os.listdir(folder) if f == "progress.png.tmp.png"]
    for name in stale:
        os.remove(os.path.join(folder, name))
    return stale


def write_config(folder: str, config, extra: dict) -> None:
    payload = {"config": config.to_dict(), "identity": config.identity(), **to_plain(extra)}
    write_json_atomic(os.path.join(folder, "config.json"), payload)


def write_progress(folder: str, history) -> None:
    """``progress.png`` (see :func:`nnunet_voco.pretrain.progress_plot.plot_progress`); a full disk is a DiskWriteError."""
    from nnunet_voco.pretrain.progress_plot import plot_progress

    path = os.path.join(folder, "progress.png")
    try:
        plot_progress(history, path)
    except Exception as e:
        disk = disk_write_error(e, path, RESUME_ADVICE)  # before the temp file gives the space back
        remove_quietly(path + ".tmp.png")
        if disk is not None:
            raise disk from None
        raise


def _append(path: str, text: str) -> None:
    """Append ``text`` to ``path`` whole or not at all (a partial line is cut off again)."""
    data = text.encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise disk_write_error(e, path, RESUME_ADVICE) or e from None
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as e:
            disk = disk_write_error(e, path, RESUME_ADVICE)
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            raise disk or e from None
    finally:
        os.close(fd)


class RunLog:
    """nnU-Net-style text log (timestamped lines) plus ``metrics.jsonl`` (one JSON object per row)."""

    def __init__(self, folder: str, enabled: bool = True):
        self.enabled = enabled
        stamp = datetime.datetime.now().strftime("%Y_%m_%d_%H_%M_%S")
        self.text_file = os.path.join(folder, f"training_log_{stamp}.txt")
        self.metrics_file = os.path.join(folder, "metrics.jsonl")

    def __call__(self, *parts, also_print: bool = True) -> None:
        if not self.enabled:
            return
        line = " ".join(str(p) for p in parts)
        _append(self.text_file, f"{datetime.datetime.now()}: {line}\n")
        if also_print:
            tqdm.write(line, file=sys.stdout)  # on a line of its own, not glued to the progress bar
            sys.stdout.flush()

    def metrics(self, row: dict) -> None:
        if self.enabled:
            _append(self.metrics_file, json.dumps(row) + "\n")

    def truncate_metrics(self, last_step: int) -> list[dict]:
        """Keep only rows up to ``last_step`` (a crash may have logged steps the checkpoint lacks)."""
        if not os.path.isfile(self.metrics_file):
            return []
        rows = []
        with open(self.metrics_file) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                if row.get("step", 0) <= last_step:
                    rows.append(row)
        if self.enabled:
            write_files_atomic([(self.metrics_file, "w", lambda f: f.writelines(json.dumps(r) + "\n" for r in rows))],
                               RESUME_ADVICE)
        return rows


def encoder_meta(bundle_meta: dict, sources, config, layout, steps: int) -> dict:
    """Metadata of ``voco_encoder.pth`` (everything the fine-tuning trainer checks)."""
    from nnunet_voco.pool.provenance import read_pool_provenance

    first = sources[0]
    cm, pm = first.configuration_manager, first.plans_manager
    plans_sources = []
    for s in sources:
        provenance = read_pool_provenance(os.path.dirname(s.data_folder)) or {}
        plans_sources.append(provenance.get("plans_source_dataset") or s.name)
    return {
        **bundle_meta,
        "plans_name": config.plans, "configuration": config.configuration, "dataset_name": first.name,
        "datasets": [s.name for s in sources], "plans_source_datasets": plans_sources,
        "num_cases": int(sum(len(s.identifiers) for s in sources)),
        "patch_size": list(cm.patch_size), "crop_size": list(layout.crop_size), "grid": list(layout.grid),
        "spacing": list(cm.spacing), "num_input_channels": int(first.num_input_channels),
        "normalization_schemes": list(cm.normalization_schemes),
        "intensity_properties": pm.foreground_intensity_properties_per_channel,
        "preset": config.preset, "steps": int(steps), "nnunet_voco_version": __version__,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def export_final(folder: str, bundle, meta: dict, first_source) -> list[str]:
    """Write ``voco_encoder.pth`` with its ``voco_encoder.json`` and, for CNN encoders, ``pretrained_network.pth``.

    ``pretrained_network.pth`` is the full network nnU-Net builds from the same plans (pretrained
    encoder + freshly initialised decoder) as ``{"network_weights": ...}``, so that the stock
    ``nnUNetv2_train ... -pretrained_weights FILE`` accepts it (its loader requires every key but
    the segmentation layers).

    The encoder state is taken with wrapper key segments removed (:func:`plain_keys`), so a
    compiled or DDP-wrapped encoder exports the keys nnU-Net's network has.

    Raises:
        DiskWriteError: a file could not be written; ``checkpoint_final.pth`` is complete, and
            ``--c`` on the finished run writes the exports again.
    """
    try:
        written = [os.path.join(folder, ENCODER_FILE)]
        state = plain_keys(bundle.state_fn())
        write_encoder(written[0], state, meta)  # with the .json sidecar the trainers' lookup scans
        if meta.get("encoder_family") == "cnn":
            from nnunet_voco.nnunet import build_plans_network

            pm, cm = first_source.plans_manager, first_source.configuration_manager
            n_out = pm.get_label_manager(first_source.dataset_json).num_segmentation_heads
            network = build_plans_network(pm, cm, first_source.num_input_channels, n_out)
            transfer_encoder(network, state, meta)
            written.append(os.path.join(folder, PRETRAINED_NETWORK_FILE))
            save_atomic({"network_weights": {k: v.cpu() for k, v in network.state_dict().items()},
                         "voco_meta": to_plain(meta)}, written[-1])
    except DiskWriteError as e:
        raise DiskWriteError(e.path, e.reason, f"{FINAL} is complete; free space there and run the same command "
                                               f"with --c to write the exports again") from None
    return written
