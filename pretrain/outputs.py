"""Files of a ``voco_pretrain`` run: folder checks, log, metrics, resumable state and final exports.

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

import numpy as np
import torch
from tqdm import tqdm

from nnunet_voco import __version__
from nnunet_voco.checkpoint import STATE_FORMAT, SCHEMA_VERSION, CheckpointError, check_schema, load_file, save_atomic
from nnunet_voco.checkpoint import save_encoder
from nnunet_voco.checkpoint import to_plain, transfer_encoder
from nnunet_voco.nnunet import UserInputError

LATEST, FINAL = "checkpoint_latest.pth", "checkpoint_final.pth"


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
                    f"{folder} holds a run with {key}={previous[key]} but this run has {key}={value}; pass "
                    f"-o to use another folder, or --overwrite to replace that run"
                )
    if config.continue_training:
        return checkpoint
    if checkpoint is not None and not config.overwrite:
        raise UserInputError(f"{folder} already holds a run ({os.path.basename(checkpoint)}); pass --c to continue "
                             f"it or --overwrite to start over")
    return None


def remove_stale_temp_files(folder: str) -> list[str]:
    """Delete temporary files that a killed save left behind (``<file>.<random>.tmp``, ``<file>.tmp``)."""
    ours = (LATEST, FINAL, "voco_encoder.pth", "pretrained_network.pth", "config.json", "metrics.jsonl")
    stale = [f for f in os.listdir(folder) if f.endswith(".tmp") and f.startswith(tuple(n + "." for n in ours))]
    for name in stale:
        os.remove(os.path.join(folder, name))
    return stale


def write_config(folder: str, config, extra: dict) -> None:
    payload = {"config": config.to_dict(), "identity": config.identity(), **to_plain(extra)}
    tmp = os.path.join(folder, "config.json.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, os.path.join(folder, "config.json"))


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
        with open(self.text_file, "a") as f:
            f.write(f"{datetime.datetime.now()}: {line}\n")
        if also_print:
            tqdm.write(line, file=sys.stdout)  # on a line of its own, not glued to the progress bar
            sys.stdout.flush()

    def metrics(self, row: dict) -> None:
        if self.enabled:
            with open(self.metrics_file, "a") as f:
                f.write(json.dumps(row) + "\n")

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
            tmp = self.metrics_file + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            os.replace(tmp, self.metrics_file)
        return rows


def _rng_state(data_rng: np.random.Generator | None = None) -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_state(path: str, step: int, model, optimizer, scaler, config, meta: dict) -> None:
    """Full resumable state (atomic).

    Raises:
        CheckpointError: the file could not be written (disk full, quota, permissions); the previous
            file at ``path`` is intact and no temporary file is left.
    """
    try:
        save_atomic({
            "format": STATE_FORMAT, "schema_version": SCHEMA_VERSION, "step": int(step),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": _rng_state(), "config": config.to_dict(), "identity": config.identity(), "meta": to_plain(meta),
        }, path)
    except OSError as e:
        raise CheckpointError(f"cannot write {path} at step {step} ({e.strerror or e}); the previous file is intact; "
                              f"free space on that disk (or pass -o elsewhere) and resume with --c") from None


def load_state(path: str, model, optimizer, scaler, config) -> int:
    """Restore a state written by :func:`save_state`; returns the step to continue from."""
    state = load_file(path)
    check_schema(state, path, STATE_FORMAT)
    identity = state.get("identity") or {}
    for key, value in config.identity().items():
        if identity.get(key) != value:
            raise UserInputError(f"{path} was trained with {key}={identity.get(key)} but this run has "
                                 f"{key}={value}; resume with the original settings or start a new run with -o")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        return int(state["step"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = " ".join(line.strip() for line in str(e).strip().splitlines())[:240] or type(e).__name__
        raise CheckpointError(f"{path} does not fit this model and optimiser ({type(e).__name__}: {first}); it was "
                              f"written for another architecture or by another nnunet-voco; start a new run with -o "
                              f"or --overwrite") from None


def encoder_meta(bundle_meta: dict, sources, config, layout, steps: int) -> dict:
    """Metadata of ``voco_encoder.pth`` (everything the fine-tuning trainer checks)."""
    from nnunet_voco.unlabeled_pool import read_pool_provenance

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
    """Write ``voco_encoder.pth`` and, for CNN encoders, ``pretrained_network.pth``.

    ``pretrained_network.pth`` is the full network nnU-Net builds from the same plans (pretrained
    encoder + freshly initialised decoder) as ``{"network_weights": ...}``, so that the stock
    ``nnUNetv2_train ... -pretrained_weights FILE`` accepts it (its loader requires every key but
    the segmentation layers).
    """
    written = [os.path.join(folder, "voco_encoder.pth")]
    state = bundle.state_fn()
    save_encoder(written[0], state, meta)
    with open(os.path.join(folder, "voco_encoder.json"), "w") as f:  # cheap to scan for the trainers
        json.dump(to_plain(meta), f, indent=2)
    if meta.get("encoder_family") == "cnn":
        from nnunet_voco.encoders.cnn import build_plans_network

        pm, cm = first_source.plans_manager, first_source.configuration_manager
        n_out = pm.get_label_manager(first_source.dataset_json).num_segmentation_heads
        network = build_plans_network(pm, cm, first_source.num_input_channels, n_out)
        transfer_encoder(network, state, meta)
        written.append(os.path.join(folder, "pretrained_network.pth"))
        save_atomic({"network_weights": {k: v.cpu() for k, v in network.state_dict().items()},
                     "voco_meta": to_plain(meta)}, written[-1])
    return written
