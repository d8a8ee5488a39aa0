"""Reading a published checkpoint safely: ``weights_only=True`` always, numpy only through an allow-list.

A checkpoint from the internet is a pickle; ``torch.load(weights_only=False)`` would run any code it
carries, so it is never used. Two kinds of published files still need more than tensors and plain
Python values:

* nnU-Net's own ``checkpoint_final.pth`` logs ``np.float64`` values (nnUNetTrainer 2.8.1 writes
  ``np.mean``/``np.nanmean`` results into ``logging`` and ``_best_ema``);
* nnssl checkpoints written before nnssl commit ``45a2ba9c`` (2025-04-14) hold numpy scalars and
  arrays in their plan and logging (ECOSYSTEM_WEIGHTS.md section 1.2).

For them the file is read again with ``torch.serialization.safe_globals(NUMPY_ALLOW_LIST)``: numpy's
scalar and array reconstructors, ``numpy.ndarray`` and the dtype classes of the plain numeric dtypes.
These only rebuild numbers; every other global (a class, a function, ``argparse.Namespace``,
``pathlib.Path``) is still refused and named in the one-line error. Numpy values found afterwards are
converted to plain Python types (``checkpoint.to_plain(..., keep_tensors=False)``), tensors inside plans to lists.

A folder (a downloaded Hugging Face snapshot or a run folder) is resolved to one file by
:func:`resolve_source`; the ``adaptation_plan.json`` beside an nnssl checkpoint is read by
:func:`read_sidecar_plan`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Mapping

import numpy as np
import torch

from nnunet_voco.nnunet import UserInputError

# numpy's reconstructors and the dtype classes of the numeric dtypes that nnU-Net / nnssl write.
_NUMPY_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                 "float16", "float32", "float64")


def _numpy_allow_list() -> list:
    multiarray = getattr(np, "_core", None) or np.core  # numpy 2 moved it to numpy._core
    return ([multiarray.multiarray.scalar, multiarray.multiarray._reconstruct, np.ndarray, np.dtype]
            + [type(np.dtype(name)) for name in _NUMPY_DTYPES])


NUMPY_ALLOW_LIST = _numpy_allow_list()
SIDECAR_PLAN = "adaptation_plan.json"
# What a folder may hold, in the order it is searched.
FOLDER_FILES = ("voco_encoder.pth", "checkpoint_final.pth", "checkpoint_best.pth")  # a run folder: its encoder
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # torch's message: "Unsupported global: GLOBAL numpy._core..."


class WeightsFileError(UserInputError):
    """A weights file that cannot be used as given: the message is one line naming the fix."""


def resolve_source(path: str) -> str:
    """The checkpoint file for ``path``: the file itself, or the one file a folder holds.

    A folder is searched for ``voco_encoder.pth`` (a voco_pretrain run), ``checkpoint_final.pth`` (nnssl /
    Hugging Face, nnU-Net fold), ``checkpoint_best.pth``, then
    for a single ``*.pt``/``*.pth`` file at its top level.

    Raises:
        WeightsFileError: nothing there, or a folder with several candidate files.
    """
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise WeightsFileError(f"{path} does not exist; pass a checkpoint file or the folder it was downloaded to")
    for name in FOLDER_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    found = sorted(f for f in os.listdir(path) if f.endswith((".pt", ".pth")) and os.path.isfile(os.path.join(path, f)))
    if len(found) == 1:
        return os.path.join(path, found[0])
    what = f"several ({', '.join(found[:4])})" if found else "no .pt/.pth file"
    raise WeightsFileError(f"{path} holds {what}; pass the checkpoint file itself")


def file_digests(path: str) -> dict[str, str]:
    """Hex sha256 and md5 of a file, one pass in 1 MiB blocks (md5: kaiko-ai/eva pins the VoCo files by it)."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
            md5.update(block)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def _refused_global(error: Exception) -> str | None:
    match = _GLOBAL.search(str(error))
    return match.group(1) if match else None


def read_checkpoint(path: str) -> tuple[dict, bool]:
    """Load ``path`` with ``weights_only=True`` (on CPU); retry with the numpy allow-list if needed.

    Returns:
        ``(content, numpy_allow_list_used)``.

    Raises:
        WeightsFileError: not a torch file, truncated, a pickled object outside the allow-list, or not a
            dict; the message says which and what to do.
    """
    used_allow_list = False
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
        refused = _refused_global(first)
        if refused is None or not refused.startswith("numpy"):
            raise _unreadable(path, first, refused) from None
        try:
            with torch.serialization.safe_globals(NUMPY_ALLOW_LIST):
                obj = torch.load(path, map_location="cpu", weights_only=True)
            used_allow_list = True
        except Exception as second:  # noqa: BLE001
            raise _unreadable(path, second, _refused_global(second)) from None
    if not isinstance(obj, Mapping):
        raise WeightsFileError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict; pass a state dict or "
                               f"an nnssl / nnU-Net / VoCo checkpoint")
    return dict(obj), used_allow_list


def _unreadable(path: str, error: Exception, refused: str | None) -> WeightsFileError:
    if refused is not None:
        return WeightsFileError(
            f"{path} carries a pickled {refused}, which weights_only=True refuses (only tensors, plain values and "
            f"numpy numbers are read); re-save the state dict alone with torch.save(model.state_dict(), FILE)")
    text = " ".join(str(error).split())[:160] or type(error).__name__
    return WeightsFileError(f"{path} is not a readable torch checkpoint ({type(error).__name__}: {text}); it is "
                            f"truncated or of another kind: download it again or pass the .pth/.pt file itself")


def read_sidecar_plan(checkpoint: str) -> dict | None:
    """``adaptation_plan.json`` next to ``checkpoint`` (nnssl's published layout), or None.

    Raises:
        WeightsFileError: the file exists but is not a JSON object.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), SIDECAR_PLAN)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            plan = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsFileError(f"{path} is not valid JSON ({e}); download it again or remove it") from None
    if not isinstance(plan, dict):
        raise WeightsFileError(f"{path} holds a {type(plan).__name__}, not an adaptation plan; remove it")
    return plan
