"""Tests for nnunet_voco.voco.monitor: metrics worked out by hand, the deterministic hold-out, the guard."""
import numpy as np
import pytest

from nnunet_voco.voco.monitor import LearningGuard, is_memorising, position_metrics, split_cases


def test_position_metrics_by_hand():
    overlaps = np.array([[[0.75, 0.25, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]])  # (1, 2, 4)
    logits = np.array([[[0.9, 0.1, 0.0, 0.2], [0.0, 0.8, 0.1, 0.0]]])
    m = position_metrics(logits, overlaps)
    assert m["val_position_accuracy"] == 0.5  # first right; second picks a base it does not overlap
    assert m["val_overlap_hit"] == 0.5 and m["val_overlap_hit_chance"] == 0.5
    assert m["val_chance"] == 0.25
    assert m["val_prior"] == 0.5  # base 0 is best for one of two targets, base 2 and 3 tie for the other
    assert m["val_overlap_error"] == pytest.approx((0.15 + 0.15 + 0.4 + 0.5) / 4)
    assert m["val_logit_gap"] == pytest.approx((0.9 + 0.1 + 0.1 + 0.0) / 4 - (0.0 + 0.2 + 0.0 + 0.8) / 4)


def test_ties_count_every_best_base():
    overlaps = np.array([[[0.5, 0.5]]])
    assert position_metrics(np.array([[[0.1, 0.9]]]), overlaps)["val_position_accuracy"] == 1.0
    assert position_metrics(np.array([[[0.9, 0.1]]]), overlaps)["val_position_accuracy"] == 1.0


def test_hold_out_is_deterministic_and_disjoint():
    cases = [(0, f"case_{i:03d}") for i in range(20)] + [(1, f"case_{i:03d}") for i in range(5)]
    train, held = split_cases(cases, ["DatasetA", "DatasetB"], 3)
    assert len(held) == 3 and not set(train) & set(held) and len(train) == 22
    assert split_cases(list(reversed(cases)), ["DatasetA", "DatasetB"], 3)[1] == list(reversed(held))
    assert split_cases(cases, ["DatasetA", "DatasetB"], 0) == (cases, [])


def _row(step, accuracy, gap):
    return {"step": step, "val_position_accuracy": accuracy, "val_logit_gap": gap, "val_chance": 1 / 9,
            "val_prior": 0.25}


def test_guard_warns_once_on_plateau_and_on_collapse():
    lines = []
    guard = LearningGuard(lines.append, patience=2)
    for step, accuracy, gap in ((0, 0.33, 0.04), (10, 0.33, 0.05), (20, 0.34, 0.005), (30, 0.30, 0.004)):
        guard(_row(step, accuracy, gap))
    assert sum("not learning" in line for line in lines) == 1
    assert sum("collapsing" in line for line in lines) == 1
    assert "0.330 (step 0) -> 0.300 (step 30)" in guard.summary()


def test_guard_is_quiet_while_learning():
    lines = []
    guard = LearningGuard(lines.append, patience=2)
    for step, accuracy in ((0, 0.33), (10, 0.40), (20, 0.45), (30, 0.5)):
        guard(_row(step, accuracy, 0.1))
    assert lines == []


def test_prefix_names_the_window_set():
    overlaps = np.array([[[0.75, 0.25, 0.0, 0.0]]])
    m = position_metrics(np.array([[[0.9, 0.1, 0.0, 0.2]]]), overlaps, prefix="train_")
    assert m["train_position_accuracy"] == 1.0 and m["train_targets"] == 1
    assert not any(k.startswith("val_") for k in m)


def _pair(step, train, val, n=96):
    return {**_row(step, val, 0.2), "train_position_accuracy": train, "train_targets": n, "val_targets": n}


def test_memorising_needs_a_gap_beyond_noise():
    assert is_memorising(_pair(0, 0.9, 0.5))
    assert not is_memorising(_pair(0, 0.55, 0.5))  # within noise at 96 targets
    assert not is_memorising(_pair(0, 0.62, 0.5))  # 0.12 > 0.1 but below 3 SE (~0.21)
    assert is_memorising(_pair(0, 0.62, 0.5, n=100000))  # with many targets 0.12 is real
    assert not is_memorising(_row(0, 0.5, 0.2))  # no training windows: no verdict


def test_guard_warns_once_on_memorising_and_names_both_figures():
    lines = []
    guard = LearningGuard(lines.append, patience=2)
    for step, train, val in ((0, 0.35, 0.33), (10, 0.6, 0.45), (20, 0.9, 0.5), (30, 0.95, 0.5)):
        guard(_pair(step, train, val))
    memo = [line for line in lines if "memorising" in line]
    assert len(memo) == 1 and "training windows 0.900" in memo[0] and "held-out windows 0.500" in memo[0]
    assert "training windows 0.350 -> 0.950" in guard.summary()
