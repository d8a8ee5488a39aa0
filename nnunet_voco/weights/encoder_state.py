"""Encoder tensors in our key space, their aliases, and the tally that lets nothing drop silently.

Our key space is that of the downstream network's ``encoder`` submodule (``stem.*``, ``stages.*``), the
keys ``voco_encoder.pth`` holds and :func:`nnunet_voco.checkpoint.transfer_encoder` loads.
dynamic-network-architectures registers every convolution and norm twice (``convs.k.conv`` is
``convs.k.all_modules.0``, ``norm`` is ``all_modules.1``), so a state dict lists each such tensor under two
names. Counting is by unique tensor (``named_parameters`` / ``named_buffers`` drop the aliases), which is
what nnU-Net master reports (224 for ResEncL) and what the trainer log's ``N/N`` counts.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Mapping

import torch

from nnunet_voco.weights.architecture import ArchitectureError, build_encoder

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile


def strip_prefixes(key: str, prefixes: tuple[str, ...]) -> str:
    """``key`` without any of ``prefixes`` at its start, removed repeatedly (``module._orig_mod.x`` -> ``x``)."""
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def strip_wrappers(state: Mapping[str, torch.Tensor], extra: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Remove leading ``module.`` / ``_orig_mod.`` (and ``extra``) prefixes, repeatedly."""
    prefixes = WRAPPER_PREFIXES + tuple(extra)
    return {strip_prefixes(key, prefixes): value for key, value in state.items()}


def tensors_only(obj: Mapping) -> dict[str, torch.Tensor]:
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def count_tensors(value) -> int:
    """Tensors anywhere inside nested dicts / lists (an optimiser state, a log)."""
    if isinstance(value, torch.Tensor):
        return 1
    if isinstance(value, Mapping):
        return sum(count_tensors(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(count_tensors(v) for v in value)
    return 0


def unique_names(module: torch.nn.Module) -> list[str]:
    """Names of the module's tensors, each shared tensor once (its first, non-alias name)."""
    return [n for n, _ in module.named_parameters()] + [n for n, _ in module.named_buffers()]


def alias_map(module: torch.nn.Module) -> dict[str, str]:
    """Every state-dict key of ``module`` -> the unique name of the tensor it refers to."""
    by_id = {}
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        by_id.setdefault(id(tensor), name)
    return {key: by_id.get(id(t), key) for key, t in module.state_dict(keep_vars=True).items()}


def with_aliases(unique: Mapping[str, torch.Tensor], module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of ``module`` (aliases included) from its unique tensors."""
    return {key: unique[name] for key, name in alias_map(module).items() if name in unique}


def to_unique(state: Mapping[str, torch.Tensor], module: torch.nn.Module, source: str) -> dict[str, torch.Tensor]:
    """Fold a state dict with aliases onto ``module``'s unique names, checking that aliases agree.

    Raises:
        ArchitectureError: an alias holds other values than the tensor it names (a corrupt file).
    """
    out = {}
    for key, name in alias_map(module).items():
        if key not in state:
            continue
        if name in out and out[name].device.type != "meta" and not torch.equal(out[name], state[key]):
            raise ArchitectureError(f"{source}: {key} differs from {name}, which it aliases; the file is corrupt")
        out.setdefault(name, state[key])
    return out


def verify_encoder(state: Mapping[str, torch.Tensor], arch: Mapping, in_channels: int, source: str) -> None:
    """Raise unless ``state`` is exactly the encoder ``arch`` builds (every name and shape, aliases optional).

    The check builds the encoder on the meta device (no memory) and compares unique tensors, in the spirit
    of nnssl's ``verify_adaptation_plans`` (rebuild, then strict-load).
    """
    encoder = build_encoder(arch, in_channels)
    names = alias_map(encoder)
    expected = {n: tuple(t.shape) for n, t in list(encoder.named_parameters()) + list(encoder.named_buffers())}
    got = {names.get(k, k): tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    bad = sorted(k for k in expected if k in got and got[k] != expected[k])
    if missing or unexpected or bad:
        parts = [f"{len(missing)} missing (first {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (first {unexpected[0]})" if unexpected else "",
                 f"{len(bad)} of another shape (first {bad[0]}: {got[bad[0]]} vs {expected[bad[0]]})" if bad else ""]
        raise ArchitectureError(f"{source}: the encoder tensors do not build the declared architecture: "
                                f"{', '.join(p for p in parts if p)}")


@dataclasses.dataclass
class Tally:
    """Every tensor of a source file, in groups, each with what happened to it."""

    groups: "OrderedDict[str, tuple[int, str]]" = dataclasses.field(default_factory=OrderedDict)

    def add(self, group: str, count: int, action: str) -> None:
        if count:
            old = self.groups.get(group, (0, action))[0]
            self.groups[group] = (old + int(count), action)

    @property
    def total(self) -> int:
        return sum(n for n, _ in self.groups.values())

    def count(self, action: str) -> int:
        return sum(n for n, a in self.groups.values() if a == action)

    def summary(self) -> str:
        """``N tensors in the file: a imported (...), b kept (...), c skipped (...)``."""
        by_action: "OrderedDict[str, list[str]]" = OrderedDict()
        ordered = sorted(self.groups.items(), key=lambda item: (item[1][1] != "imported", item[1][1] == "skipped"))
        for group, (n, action) in ordered:
            by_action.setdefault(action, []).append(f"{group} {n}")
        parts = [f"{sum(int(g.rsplit(' ', 1)[1]) for g in gs)} {a} ({', '.join(gs)})" for a, gs in by_action.items()]
        return f"{self.total} tensors in the file: " + "; ".join(parts)

    def to_dict(self) -> dict:
        return {g: {"count": n, "action": a} for g, (n, a) in self.groups.items()}
