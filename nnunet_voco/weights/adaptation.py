"""The rules that move encoder weights into an encoder of another topology, shared by every consumer.

Used by the fine-tuning trainers (:mod:`nnunet_voco.finetune.weights_loading`), ``voco_pretrain --init``
(:mod:`nnunet_voco.weights.pretrain_init`), ``voco_import_weights --inspect -d`` and ``voco_plan_like``
(whether a dataset's plans already fit). Both sides are dynamic-network-architectures encoders in our
key space (``stem.*``, ``stages.S.*``); only unique tensors are planned (aliases follow, see
:mod:`nnunet_voco.weights.encoder_state`).

Rules (re-derived from nnU-Net master's ``DynamicPretrainedTrainer`` semantics, ECOSYSTEM_WEIGHTS.md 3.3;
no code taken from it):

* same shape: copied;
* a kernel axis that is 3 in the weights and 1 in the target: the mean over that axis (the response to a
  signal constant along that axis is kept). Any other kernel change (1 -> 3, 3 -> 5) is refused;
* stages: the first ``min(n_weights, n_target)`` are loaded; extra target stages keep their random
  initialisation, surplus source stages are dropped; both are counted and reported;
* a stage of another width or another number of blocks / convolutions is refused, naming the stage;
* residual weights into a plain-convolution encoder (or the reverse), or a 2-D target, are refused;
* input channels: the first convolution (every alias, they share one tensor) takes the project's rule
  :func:`nnunet_voco.checkpoint.adapt_input_channels` (each new channel gets the channel-summed kernel
  divided by the new count; for one source channel this equals nnU-Net master's repeat / C, and it also
  serves C_src > C_target, which master does not).
* the shortcut projection of a residual block is ``skip.1`` after a pooling and ``skip.0`` without one
  (stride 1): the same tensor under either name is matched.

Where we deviate from master: every adaptation is reported and anything that is not loaded is counted,
and a width or block mismatch stops the run instead of being skipped silently (``strict=False`` there).
"""
from __future__ import annotations

import dataclasses
import re
from collections import Counter
from typing import Mapping, Sequence

import torch

from nnunet_voco.checkpoint import adapt_input_channels
from nnunet_voco.nnunet import UserInputError
from nnunet_voco.weights.encoder_state import unique_names

_STAGE = re.compile(r"^stages\.(\d+)\.")
_UNIT = re.compile(r"^stages\.(\d+)\.(?:blocks\.(\d+)|0\.convs\.(\d+))\.")


class AdaptationError(UserInputError):
    """The weights cannot be moved into the target encoder; the message says why (not yet what to do)."""


def _stage(name: str) -> int:
    m = _STAGE.match(name)
    return int(m.group(1)) if m else 0  # the stem belongs to stage 0


def _units(names) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for n in names:
        m = _UNIT.match(n)
        if m:
            out.setdefault(int(m.group(1)), set()).add(int(m.group(2) or m.group(3)))
    return out


def _first_conv(shapes: Mapping[str, tuple], stage: int) -> tuple | None:
    for key in (f"stages.{stage}.blocks.0.conv1.conv.weight", f"stages.{stage}.0.convs.0.conv.weight"):
        if key in shapes:
            return shapes[key]
    return None


@dataclasses.dataclass
class TransferPlan:
    """What :func:`apply_transfer` will do, tensor by tensor (unique names of the target encoder)."""

    sources: dict[str, str]  # target name -> source name (loaded, possibly adapted)
    kernel_axes: dict[str, tuple[int, ...]]  # target name -> spatial axes averaged (0 = first spatial axis)
    channels: dict[str, tuple[int, int]]  # target name -> (source channels, target channels)
    random: dict[int, int]  # target stage -> tensors left at their initialisation
    dropped: dict[int, int]  # source stage -> tensors not used
    expected: int  # unique tensors of the target encoder
    source_total: int  # unique tensors of the source encoder

    @property
    def loaded(self) -> int:
        return len(self.sources)

    @property
    def identical_topology(self) -> bool:
        """Every tensor copied or channel-adapted: the weights' encoder is the target's."""
        return not self.kernel_axes and not self.random and not self.dropped

    @property
    def one_to_one(self) -> bool:
        """Every tensor copied as it is."""
        return self.identical_topology and not self.channels

    def lines(self) -> list[str]:
        """The adaptations, one line each (empty for a 1:1 load)."""
        out = []
        by_axes = Counter(self.kernel_axes.values())
        for axes, n in sorted(by_axes.items()):
            stages = sorted({_stage(k) for k, a in self.kernel_axes.items() if a == axes})
            out.append(f"kernels averaged over spatial axis {','.join(map(str, axes))} (3 in the weights, 1 here) in "
                       f"stage(s) {','.join(map(str, stages))}{' and the stem' if any(k.startswith('stem.') for k in self.kernel_axes) else ''}: {n} tensors")
        for name, (a, b) in sorted(self.channels.items()):
            out.append(f"input projection {name} adapted {a} -> {b} channels (each channel: the channel-summed kernel / "
                       f"{b}; every alias shares it)")
        for stage, n in sorted(self.random.items()):
            out.append(f"stage {stage}: {n} tensors keep their random initialisation (the weights have no stage {stage})")
        for stage, n in sorted(self.dropped.items()):
            out.append(f"stage {stage} of the weights dropped ({n} tensors; the target has no stage {stage})")
        return out

    def summary(self) -> str:
        return f"{self.loaded}/{self.expected} encoder tensors" + ("" if self.one_to_one else " (adapted)")


def _source_name(name: str, source: Mapping) -> str | None:
    if name in source:
        return name
    for a, b in ((".skip.1.", ".skip.0."), (".skip.0.", ".skip.1.")):
        if a in name and name.replace(a, b) in source:
            return name.replace(a, b)
    return None


def _check_structure(src: Mapping[str, tuple], tgt: Mapping[str, tuple]) -> tuple[int, int]:
    src_stem, tgt_stem = any(k.startswith("stem.") for k in src), any(k.startswith("stem.") for k in tgt)
    if src_stem != tgt_stem:
        kinds = ("a ResidualEncoderUNet (residual blocks)", "a PlainConvUNet (plain convolutions)")
        raise AdaptationError(f"the weights are {kinds[0 if src_stem else 1]} encoder but the target is "
                              f"{kinds[0 if tgt_stem else 1]}")
    weight = next(v for k, v in tgt.items() if k.endswith("conv.weight"))
    if len(weight) != 5:
        raise AdaptationError(f"the target network is {len(weight) - 2}-D; 3-D weights load only into 3-D "
                              f"configurations (3d_fullres / 3d_lowres)")
    su, tu = _units(src), _units(tgt)
    n_src, n_tgt = len(su), len(tu)
    for s in range(min(n_src, n_tgt)):
        a, b = _first_conv(src, s), _first_conv(tgt, s)
        if a is not None and b is not None and a[0] != b[0]:
            raise AdaptationError(f"stage {s} is {a[0]} channels wide in the weights but {b[0]} in the target "
                                  f"(features_per_stage)")
        if len(su[s]) != len(tu[s]):
            word = "blocks (n_blocks_per_stage)" if src_stem else "convolutions (n_conv_per_stage)"
            raise AdaptationError(f"stage {s} has {len(su[s])} {word} in the weights but {len(tu[s])} in the target")
    return n_src, n_tgt


def _kernel_axes(name: str, a: tuple, b: tuple) -> tuple[int, ...]:
    axes = []
    for axis, (x, y) in enumerate(zip(a[2:], b[2:])):
        if x == y:
            continue
        if x == 3 and y == 1:
            axes.append(axis)
        else:
            raise AdaptationError(f"{name}: kernel {tuple(a[2:])} in the weights cannot become {tuple(b[2:])} (only "
                                  f"3 -> 1 along an axis is defined: its mean)")
    return tuple(axes)


def plan_transfer(source: Mapping[str, torch.Tensor], target: torch.nn.Module, in_proj: Sequence[str]) -> TransferPlan:
    """Decide, from names and shapes alone, how ``source`` (unique tensors) moves into ``target``.

    ``target`` may live on the meta device (a dry run for ``--inspect`` and ``voco_plan_like``).

    Raises:
        AdaptationError: family, dimension, width, block or kernel mismatch (the reason, one line).
    """
    tgt_tensors = dict(target.named_parameters()) | dict(target.named_buffers())
    tgt = {k: tuple(v.shape) for k, v in tgt_tensors.items()}
    src = {k: tuple(v.shape) for k, v in source.items()}
    n_src, n_tgt = _check_structure(src, tgt)
    in_proj_weights = {p + ".weight" for p in in_proj}
    plan = TransferPlan({}, {}, {}, {}, {}, len(unique_names(target)), len(src))
    for name in unique_names(target):
        stage = _stage(name)
        if stage >= n_src:
            plan.random[stage] = plan.random.get(stage, 0) + 1
            continue
        origin = _source_name(name, src)
        if origin is None:
            raise AdaptationError(f"the weights have no tensor for {name} (stage {stage}); the encoders differ in "
                                  f"layout (norm, bias or block type)")
        a, b = src[origin], tgt[name]
        if a != b:
            if len(a) != len(b) or a[0] != b[0]:
                raise AdaptationError(f"{name} is {a} in the weights but {b} in the target")
            if len(a) == 5:
                axes = _kernel_axes(name, a, b)
                if axes:
                    plan.kernel_axes[name] = axes
                if a[1] != b[1]:
                    if name not in in_proj_weights:
                        raise AdaptationError(f"{name} takes {a[1]} input channels in the weights but {b[1]} in "
                                              f"the target")
                    plan.channels[name] = (a[1], b[1])
        plan.sources[name] = origin
    used = set(plan.sources.values())
    for name in src:
        if name not in used:
            stage = _stage(name)
            if stage < n_tgt:
                raise AdaptationError(f"the target has no place for {name} of the weights (stage {stage})")
            plan.dropped[stage] = plan.dropped.get(stage, 0) + 1
    return plan


def adapted_tensor(plan: TransferPlan, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` (the source of target ``name``) after the plan's kernel and channel rules."""
    axes = plan.kernel_axes.get(name, ())
    if axes:
        tensor = tensor.mean(dim=tuple(2 + a for a in axes), keepdim=True)
    if name in plan.channels:
        tensor = adapt_input_channels(tensor, plan.channels[name][1])
    return tensor


@torch.no_grad()
def apply_transfer(plan: TransferPlan, source: Mapping[str, torch.Tensor], target: torch.nn.Module) -> None:
    """Load the planned tensors into ``target`` (aliases follow: they share the tensor)."""
    new_state = {name: adapted_tensor(plan, name, source[origin]) for name, origin in plan.sources.items()}
    missing, unexpected = target.load_state_dict(new_state, strict=False)
    if unexpected:
        raise AdaptationError(f"internal: {len(unexpected)} planned tensors have no place ({unexpected[0]})")
