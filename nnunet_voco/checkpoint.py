"""Checkpoint files of nnunet-voco: atomic writes, safe reads, metadata and loud weight transfer.

Files (see DESIGN.md section 5):
    * ``voco_encoder.pth``: ``{"encoder": state_dict, "meta": {...}}`` — the pretrained encoder in
      the key space of the module named by ``meta["key_to_encoder"]`` inside the downstream network,
      plus everything needed to check compatibility (architecture, plans, spacing, normalisation).
      Where it lives and its ``.json`` sidecar are the artifact contract of :mod:`nnunet_voco.artifacts`.
    * ``checkpoint_latest.pth`` / ``checkpoint_final.pth``: the full resumable pre-training state.

Every file is written atomically by :mod:`nnunet_voco.storage.atomic_files` (temporary name, fsync,
``os.replace``), so a crash (or a full disk) never leaves a truncated file under the final name; a
full, read-only or vanished disk raises :class:`~nnunet_voco.storage.disk_errors.DiskWriteError`.
Every file is read with ``torch.load(weights_only=True)``: a checkpoint from the internet can carry a
pickled object that executes code, and that is refused.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import numpy as np
import torch

from nnunet_voco.storage.atomic_files import write_files_atomic

SCHEMA_VERSION = 1
ENCODER_FORMAT = "nnunet_voco.encoder"
STATE_FORMAT = "nnunet_voco.pretrain_state"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: unreadable, unsafe, of another format or schema version."""


def to_plain(value: Any, keep_tensors: bool = True) -> Any:
    """Convert numpy scalars/arrays, tuples and paths to plain python types (weights_only-safe); tensors stay
    tensors, or become lists with ``keep_tensors=False`` (plans read from other tools' checkpoints)."""
    if isinstance(value, Mapping):
        return {str(k): to_plain(v, keep_tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v, keep_tensors) for v in value]
    if isinstance(value, np.ndarray) or (isinstance(value, torch.Tensor) and not keep_tensors):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def save_atomic(obj: Any, path: str) -> None:
    """Write ``obj`` with ``torch.save`` to ``path`` atomically.

    The previous file at ``path`` (if any) stays intact until the new one is completely on disk; on
    any error the temporary file is removed and the error propagates.

    Raises:
        DiskWriteError: the disk is full, read-only, over quota or gone (one line naming ``path``).
    """
    write_files_atomic([(path, "wb", lambda f: torch.save(obj, f))])


def load_file(path: str, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``.

    Raises:
        FileNotFoundError: the file does not exist.
        RuntimeError: the file is truncated/corrupt or contains objects that ``weights_only``
            refuses (pickled code); the message names the file and says what to do.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path} safely ({type(e).__name__}: {first[:200]}); the file is "
            f"truncated, corrupt or carries pickled objects, which are refused (weights_only=True); "
            f"use an intact file written by nnunet-voco or convert it with voco_import_weights"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def check_schema(obj: Mapping, path: str, expected_format: str) -> None:
    """Raise a one-line error unless ``obj`` is a current nnunet-voco file of ``expected_format``."""
    meta = obj if "format" in obj else obj.get("meta", {})
    fmt = meta.get("format")
    if fmt != expected_format:
        raise CheckpointError(
            f"{path} is not a {expected_format} file (format field: {fmt!r}); pass a file written by "
            f"voco_pretrain or converted with voco_import_weights"
        )
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CheckpointError(
            f"{path} has schema version {version!r}, this nnunet-voco reads version {SCHEMA_VERSION}; "
            f"re-export it with the nnunet-voco release that wrote it"
        )


def encoder_file_content(encoder_state: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                         heads: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> dict:
    """``{"encoder": CPU tensors, "meta": plain-typed metadata with format and schema version}``, plus
    ``"heads"`` (e.g. an imported VoCo projector for ``voco_pretrain --init``) when given."""
    meta = to_plain(dict(meta))
    meta.update(format=ENCODER_FORMAT, schema_version=SCHEMA_VERSION)
    state = {k: v.detach().to("cpu").clone() for k, v in encoder_state.items()}
    content = {"encoder": state, "meta": meta}
    if heads:
        content["heads"] = {name: {k: v.detach().to("cpu").clone() for k, v in h.items()} for name, h in heads.items()}
    return content


def save_encoder(path: str, encoder_state: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Write the encoder file alone (:func:`nnunet_voco.artifacts.write_encoder` adds its JSON sidecar)."""
    save_atomic(encoder_file_content(encoder_state, meta), path)


def load_encoder(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Read ``voco_encoder.pth`` safely and check its schema; returns ``(state_dict, meta)``."""
    obj = load_file(path)
    check_schema(obj, path, ENCODER_FORMAT)
    return obj["encoder"], obj["meta"]


@dataclasses.dataclass
class TransferReport:
    """Outcome of :func:`transfer_encoder`: keys relative to the encoder module."""

    loaded: list[str]
    expected: int
    missing: list[str]
    mismatched: list[tuple[str, tuple, tuple]]
    unexpected: list[str]
    adapted: list[str]

    @property
    def complete(self) -> bool:
        return not self.missing and not self.mismatched and not self.unexpected


def unwrap_network(network: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if hasattr(network, "_orig_mod"):
            network = network._orig_mod
        elif isinstance(network, torch.nn.parallel.DistributedDataParallel):
            network = network.module
        else:
            return network


def adapt_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """Stem rule for a different number of input channels.

    Every new input channel gets the sum of the pretrained kernels over their input channels divided
    by the new channel count. If all input channels carry the same image, the first layer then
    responds exactly as the pretrained one did to that image (1 -> n: the kernel is shared 1/n each;
    n -> 1: the kernels are summed).
    """
    summed = weight.sum(dim=1, keepdim=True)
    shape = list(weight.shape)
    shape[1] = channels
    return (summed / channels).expand(shape).clone()


def transfer_encoder(
    network: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    allow_partial: bool = False,
    adapt_channels: bool = True,
) -> TransferReport:
    """Load pretrained encoder tensors into ``network`` and report exactly what happened.

    The encoder module is ``network.get_submodule(meta["key_to_encoder"])`` (the whole network for
    an empty key). Its keys that start with one of ``meta["encoder_key_prefixes"]`` (default: all
    keys) must all be present in ``state`` with the same shape. Alias keys of
    dynamic-network-architectures (``convs.k.conv`` and ``convs.k.all_modules.0``, ``decoder.encoder``)
    stay consistent because the tensors are loaded into the module, not into a merged dict.

    Args:
        network: the downstream network (DDP / compiled wrappers are unwrapped).
        state: encoder state dict from :func:`load_encoder`.
        meta: its metadata.
        allow_partial: load what matches instead of raising when keys are missing or mismatched.
        adapt_channels: apply :func:`adapt_input_channels` to the input projections named by
            ``meta["keys_to_in_proj"]`` when only their input-channel dimension differs.

    Returns:
        The :class:`TransferReport`.

    Raises:
        RuntimeError: the transfer is incomplete and ``allow_partial`` is False; the message names
            the first offending keys and both shapes.
    """
    module = unwrap_network(network)
    key = meta.get("key_to_encoder") or ""
    if key:
        module = module.get_submodule(key)
    target = module.state_dict()
    prefixes = tuple(meta.get("encoder_key_prefixes") or ("",))
    expected = [k for k in target if k.startswith(prefixes)]
    in_proj = {p + suffix for p in meta.get("keys_to_in_proj", []) for suffix in (".weight",)}
    loaded, missing, mismatched, adapted = [], [], [], []
    new_state = {}
    for k in expected:
        if k not in state:
            missing.append(k)
            continue
        src, dst = state[k], target[k]
        if tuple(src.shape) == tuple(dst.shape):
            new_state[k] = src
        elif (
            adapt_channels
            and k in in_proj
            and src.dim() == dst.dim()
            and src.shape[0] == dst.shape[0]
            and src.shape[2:] == dst.shape[2:]
        ):
            new_state[k] = adapt_input_channels(src, dst.shape[1])
            adapted.append(k)
        else:
            mismatched.append((k, tuple(src.shape), tuple(dst.shape)))
            continue
        loaded.append(k)
    unexpected = [k for k in state if k not in target]
    report = TransferReport(loaded, len(expected), missing, mismatched, unexpected, adapted)
    if not report.complete and not allow_partial:
        raise RuntimeError(_describe_failure(report))
    module.load_state_dict(new_state, strict=False)
    return report


def _describe_failure(report: TransferReport) -> str:
    parts = [f"VoCo: only {len(report.loaded)}/{report.expected} encoder tensors match the network"]
    if report.mismatched:
        k, a, b = report.mismatched[0]
        parts.append(f"{len(report.mismatched)} shape mismatches (first: {k} checkpoint {a} vs network {b})")
    if report.missing:
        parts.append(f"{len(report.missing)} missing (first: {', '.join(report.missing[:3])})")
    if report.unexpected:
        parts.append(f"{len(report.unexpected)} unexpected (first: {', '.join(report.unexpected[:3])})")
    parts.append("the checkpoint was pretrained for another architecture; re-run voco_pretrain with these "
                 "plans or set nnUNet_voco_allow_partial=1 to accept a partial transfer")
    return "; ".join(parts)
