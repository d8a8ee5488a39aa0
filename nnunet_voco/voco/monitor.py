"""Held-out position monitor: does VoCo pre-training teach the encoder anything?

The VoCo loss [0, 1] is no learning signal on its own: the v2 total loss can *rise* while the
encoder learns, because the target of its inter-volume term is the teacher's own, moving output;
and users of both official codes report "loss not decreasing" without a way to check. The monitor
measures the pretext task itself on data the run never trains on:

* a few cases are held out of the training stream (:func:`split_cases`: deterministic, by a hash of
  the case name, listed in ``config.json``);
* a fixed set of windows is drawn from them once (:class:`FixedWindows`, fixed seed, the run's
  crop layout, no augmentation), each with a few target crops;
* an equal set of fixed windows is drawn, with the same protocol, from cases the run *does* train on
  (:class:`MonitorWindows`), so that learning can be told from memorising: an encoder that
  memorises its training cases scores high on their windows and not on the held-out ones;
* at step 0 and every ``--val_every`` steps the model predicts, for every target crop, the base crop
  it overlaps most (argmax of the intra-volume logits the prediction term trains).

Metrics (:func:`position_metrics`):
    ``val_position_accuracy``: share of target crops whose argmax-logit base is an argmax-overlap
    base. ``val_chance``: 1/K, a uniform guess. ``val_prior``: the best constant guess on this set
    (for a 3x3 grid the centre base is the argmax of about 1/4 of uniformly placed targets).
    An *untrained* encoder already beats both by matching voxel content (crops that overlap share
    voxels), so the step-0 value is the baseline to beat, not chance.
    ``val_overlap_error``: mean |logit - overlap| over overlapping pairs (what the loss regresses).
    ``val_logit_gap``: mean logit of overlapping minus non-overlapping pairs (0 at collapse).
    ``val_overlap_hit``: share of target crops whose argmax-logit base overlaps them at all (a
    coarser skill than the exact position); ``val_overlap_hit_chance`` is its uniform-guess value.
    The same metrics on the training-case windows carry the prefix ``train_`` (e.g.
    ``train_position_accuracy``); ``train_val_gap`` is training minus held-out position accuracy.

:class:`LearningGuard` turns the series into a one-time warning with a concrete suggestion when the
accuracy has not risen above its step-0 value, the gap collapses, or the training windows run far
ahead of the held-out ones (memorising).

References:
    [0] VoCo, CVPR 2024, arXiv:2402.17300. [1] VoCo TPAMI extension, arXiv:2410.09890.
    Neither official code has a held-out monitor; this is ours.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Optional, Sequence

import numpy as np
import torch

from nnunet_voco.voco.sampling import WindowSampler, cut_crops, read_window

MONITOR_SEED = 20240217  # fixed: the held-out windows are the same for every run seed


def split_cases(cases: Sequence[tuple[int, str]], names: Sequence[str], n: int) -> tuple[list, list]:
    """Deterministic hold-out: the ``n`` cases with the smallest hash of their name.

    Args:
        cases: ``(source index, identifier)`` pairs.
        names: the dataset name of each source index.
        n: number of cases to hold out (0 holds out none).

    Returns:
        ``(train, held_out)`` lists of pairs, in the input order.
    """
    if n <= 0:
        return list(cases), []
    key = {c: hashlib.sha1(f"{names[c[0]]}/{c[1]}".encode()).hexdigest() for c in cases}
    held = set(sorted(cases, key=key.__getitem__)[:n])
    return [c for c in cases if c not in held], [c for c in cases if c in held]


def position_metrics(logits: np.ndarray, overlaps: np.ndarray, prefix: str = "val_") -> dict[str, float]:
    """Position-prediction metrics of ``logits`` against ``overlaps``, both ``(N, S, K)``; keys start with ``prefix``."""
    logits, overlaps = np.asarray(logits, dtype=np.float64), np.asarray(overlaps, dtype=np.float64)
    k = overlaps.shape[-1]
    logits, overlaps = logits.reshape(-1, k), overlaps.reshape(-1, k)
    best = overlaps.max(axis=1, keepdims=True)
    is_best = overlaps >= best - 1e-6  # ties: a target centred on a boundary has several best bases
    picked = logits.argmax(axis=1)
    on = overlaps > 0
    metrics = {
        "position_accuracy": float(is_best[np.arange(len(picked)), picked].mean()),
        "overlap_error": float(np.abs(logits - overlaps)[on].mean()),
        "logit_gap": float(logits[on].mean() - (logits[~on].mean() if (~on).any() else 0.0)),
        "chance": 1.0 / k,
        "prior": float(is_best.mean(axis=0).max()),
        "overlap_hit": float(on[np.arange(len(picked)), picked].mean()),
        "overlap_hit_chance": float(on.mean()),
        "targets": int(len(picked)),
    }
    return {prefix + key: value for key, value in metrics.items()}


class FixedWindows:
    """A fixed set of windows from some cases, re-read at every evaluation.

    Only the window positions and target offsets are kept (memory stays small for large crops);
    the windows are read again from the memory-mapped cases when evaluated.

    Args:
        sampler: a :class:`WindowSampler` over the cases (same layout as training).
        num_windows: windows in the set, spread over the cases in turn; when there are more cases
            than windows, over evenly spaced cases.
        num_targets: target crops per window.
        seed: seed of the window positions (fixed: the same windows for every run seed).
    """

    def __init__(self, sampler: WindowSampler, num_windows: int, num_targets: int = 4, seed: int = MONITOR_SEED):
        self.sampler = sampler
        rng = np.random.default_rng(seed)
        cases = sampler.cases
        if len(cases) > num_windows:
            cases = [cases[i] for i in np.linspace(0, len(cases) - 1, num_windows).round().astype(int)]
        self.specs = []
        for i in range(num_windows):
            case = cases[i % len(cases)]
            sample = sampler.sample_window(rng, num_targets, case)
            self.specs.append((case, sample["origin"], sample["target_offsets"], sample["overlaps"]))

    def __len__(self) -> int:
        return len(self.specs)

    def batches(self, batch_size: int, rank: int = 0, world_size: int = 1):
        """Yields ``(targets (B, S, C, *crop), bases (B, K, C, *crop), overlaps (B, S, K))`` numpy batches:
        batch ``i`` of the set when ``i % world_size == rank`` (a rank's share; all of them by default)."""
        layout = self.sampler.layout
        for start in list(range(0, len(self.specs), batch_size))[rank::world_size]:
            bases, targets, overlaps = [], [], []
            for (source_index, identifier), origin, offsets, overlap in self.specs[start:start + batch_size]:
                data = self.sampler._dataset(source_index).load_case(identifier)[0]
                b, t = cut_crops(read_window(data, origin, layout.window), layout, offsets)
                bases.append(b), targets.append(t), overlaps.append(overlap)
            yield np.stack(targets), np.stack(bases), np.stack(overlaps)


@dataclasses.dataclass(frozen=True)
class MonitorWindows:
    """The monitor's two window sets: from held-out cases, and an equal set from training cases.

    ``training`` is None when the run trains on no case the monitor could use (never in practice:
    the hold-out always leaves one training case).
    """

    held_out: FixedWindows
    training: Optional[FixedWindows]

    @property
    def num_targets(self) -> int:
        """Target crops evaluated per set (the denominator of the accuracies)."""
        return sum(len(spec[2]) for spec in self.held_out.specs)


def _logits(model, windows: FixedWindows, batch_size: int, device: torch.device, rank: int, world_size: int,
            gather) -> tuple[np.ndarray, np.ndarray]:
    logits, overlaps = [], []
    for targets, bases, overlap in windows.batches(batch_size, rank, world_size):
        out = model.position_logits(torch.from_numpy(targets).to(device), torch.from_numpy(bases).to(device))
        logits.append(out.float().cpu().numpy())
        overlaps.append(overlap)
    if world_size > 1:  # batch i was evaluated by rank i % world_size: interleave the shares back
        shares = gather((logits, overlaps))
        order = [(i, r) for r in range(world_size) for i in range(len(shares[r][0]))]
        order.sort(key=lambda ir: ir[0] * world_size + ir[1])
        logits, overlaps = [shares[r][0][i] for i, r in order], [shares[r][1][i] for i, r in order]
    return np.concatenate(logits), np.concatenate(overlaps)


def evaluate(model, monitor: MonitorWindows, batch_size: int, device: torch.device, rank: int = 0,
             world_size: int = 1, gather=None) -> dict[str, float]:
    """Position metrics of ``model`` (a :class:`~nnunet_voco.voco.model.VoCoModel`) on both window sets.

    Batches have the training batch's number of volumes, so the projector's batch statistics are
    computed over a batch like the ones it trains on. Keys: ``val_*`` (held-out windows), ``train_*``
    (training-case windows), ``train_val_gap`` (training minus held-out position accuracy) and
    ``val_seconds``, the wall time of both.

    Under DDP every rank calls it with its ``rank``, the ``world_size`` and ``gather`` (``obj ->
    [obj of every rank]``): each evaluates every ``world_size``-th batch, and every rank returns the
    same metrics, so no rank waits in a collective while another evaluates.
    """
    start = time.perf_counter()
    part = (rank, world_size, gather)
    metrics = position_metrics(*_logits(model, monitor.held_out, batch_size, device, *part), prefix="val_")
    if monitor.training is not None:
        metrics.update(position_metrics(*_logits(model, monitor.training, batch_size, device, *part), prefix="train_"))
        metrics["train_val_gap"] = metrics["train_position_accuracy"] - metrics["val_position_accuracy"]
    metrics["val_seconds"] = time.perf_counter() - start
    return metrics


def is_memorising(row: dict, min_gap: float = 0.1) -> bool:
    """True when the training windows' position accuracy exceeds the held-out one by more than
    ``min_gap`` and by more than 3 standard errors of the difference (binomial, per set of targets)."""
    if "train_position_accuracy" not in row:
        return False
    t, v = row["train_position_accuracy"], row["val_position_accuracy"]
    n_t, n_v = row.get("train_targets", 1), row.get("val_targets", 1)
    se = np.sqrt(t * (1 - t) / max(n_t, 1) + v * (1 - v) / max(n_v, 1))
    return t - v > max(min_gap, 3 * se)


class LearningGuard:
    """Warns once when the held-out accuracy has not improved over step 0, and once on collapse.

    Args:
        log: the run's logger (``log(message)``).
        min_gain: accuracy gain over step 0 below which a run counts as not learning.
        patience: evaluations after step 0 before the plateau warning can fire.
    """

    def __init__(self, log, min_gain: float = 0.02, patience: int = 3, memorising_gap: float = 0.1):
        self.log, self.min_gain, self.patience, self.memorising_gap = log, min_gain, patience, memorising_gap
        self.history: list[dict] = []
        self.warned: set[str] = set()

    def __call__(self, row: dict) -> None:
        self.history.append(row)
        first, evals = self.history[0], len(self.history) - 1
        best = max(r["val_position_accuracy"] for r in self.history[1:]) if evals else None
        if (evals >= self.patience and "plateau" not in self.warned
                and best < first["val_position_accuracy"] + self.min_gain):
            self.warned.add("plateau")
            self.log(f"VoCo: warning: held-out position accuracy {row['val_position_accuracy']:.3f} at step "
                     f"{row['step']} is no better than the untrained encoder's {first['val_position_accuracy']:.3f} "
                     f"(chance {row['val_chance']:.3f}); the encoder is not learning the pretext. Try more volumes "
                     f"per step (--batch_size), another --lr (x3 up or down), or check padding_share in "
                     f"metrics.jsonl")
        if evals >= 1 and "collapse" not in self.warned and row["val_logit_gap"] < 0.01 <= first["val_logit_gap"]:
            self.warned.add("collapse")
            self.log(f"VoCo: warning: held-out logit gap fell to {row['val_logit_gap']:.4f} at step {row['step']} "
                     f"(step 0: {first['val_logit_gap']:.4f}): the embeddings are collapsing; lower --lr or raise "
                     f"--ema_momentum (e.g. 0.99)")
        if "memorising" not in self.warned and is_memorising(row, self.memorising_gap):
            self.warned.add("memorising")
            self.log(f"VoCo: warning: memorising: position accuracy on training windows "
                     f"{row['train_position_accuracy']:.3f}, on held-out windows {row['val_position_accuracy']:.3f} "
                     f"at step {row['step']}; the encoder learns its training cases rather than anatomy that "
                     f"carries over: pool more cases (voco_preprocess_unlabeled), or stop earlier")

    def summary(self) -> str:
        """One line: held-out accuracy at the first and last evaluation, chance and prior."""
        if not self.history:
            return "held-out position monitor off (--val_cases 0)"
        a, b = self.history[0], self.history[-1]
        return (f"held-out position accuracy {a['val_position_accuracy']:.3f} (step {a['step']}) -> "
                f"{b['val_position_accuracy']:.3f} (step {b['step']}), chance {b['val_chance']:.3f}, best constant "
                f"guess {b['val_prior']:.3f}; logit gap {a['val_logit_gap']:.3f} -> {b['val_logit_gap']:.3f}; argmax base "
                f"overlaps the target {a.get('val_overlap_hit', float('nan')):.3f} -> {b.get('val_overlap_hit', float('nan')):.3f} (chance "
                f"{b.get('val_overlap_hit_chance', float('nan')):.3f})"
                + (f"; training windows {a['train_position_accuracy']:.3f} -> {b['train_position_accuracy']:.3f}"
                   if "train_position_accuracy" in a and "train_position_accuracy" in b else ""))
