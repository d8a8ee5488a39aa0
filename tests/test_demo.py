"""voco_demo: stage plumbing and report on hand-made inputs (fast), and the real --quick run (slow)."""
from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np
import pytest

from conftest import run
from nnunet_voco.demo.arms import ARMS, COMPARISONS
from nnunet_voco.demo.figure import pick_slice
from nnunet_voco.demo.folders import DemoFolders
from nnunet_voco.demo.report import format_table, seed_stats, verdict
from nnunet_voco.demo.results import CLASS_NAMES, monitor_rows, read_dice
from nnunet_voco.demo.run_sizes import RUN_SIZES
from nnunet_voco.demo.stages import N_SPLIT_FOLDS, Stage, build_stages, write_splits
from nnunet_voco.demo.workflow import load_state, run_stages
from nnunet_voco.trainers.demo_trainers import DEMO_BUDGET

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def folders(tmp_path) -> DemoFolders:
    return DemoFolders(str(tmp_path), RUN_SIZES["quick"])


def test_splits_are_identical_folds_of_training_vs_heldout_cases(folders):
    os.makedirs(os.path.join(folders.preprocessed, folders.dataset))
    write_splits(folders)
    with open(os.path.join(folders.preprocessed, folders.dataset, "splits_final.json")) as f:
        splits = json.load(f)
    fold = {"train": ["VoCoDemoQuick_0000", "VoCoDemoQuick_0001", "VoCoDemoQuick_0002"], "val": ["VoCoDemoQuick_0003"]}
    assert splits == [fold] * N_SPLIT_FOLDS and N_SPLIT_FOLDS >= 6  # folds 0-2 report, 3-5 tuning
    assert folders.heldout_ids() == ["VoCoDemoQuick_0003"]  # the phantom writer numbers them after training


def test_stages_order_commands_and_matched_trainers(folders):
    stages = build_stages(folders, "cpu")
    keys = [s.key for s in stages]
    assert keys == ["data", "plan", "pool", "pretrain", "train_frozen_voco_s0", "train_frozen_scratch_s0",
                    "train_voco_s0", "train_scratch_s0"]
    for i, stage in enumerate(stages):
        assert set(stage.needs) <= set(keys[:i])
    by_key = {s.key: s for s in stages}
    assert by_key["data"].command(False)[:2] == ["python", "-c"] and by_key["data"].action is not None
    pretrain = by_key["pretrain"].command(False)
    assert pretrain[:4] == ["voco_pretrain", "-d", "832", "-device"]  # the pool only
    assert pretrain[pretrain.index("--val_cases") + 1] == "1" and "--val_every" in pretrain
    voco = by_key["train_voco_s0"].command(False)
    assert voco == ["nnUNetv2_train", "831", "3d_fullres", "0", "-tr", "nnUNetTrainerVoCo_demoquick", "-device", "cpu"]
    assert by_key["train_scratch_s0"].command(False)[5] == "nnUNetTrainerVoCoScratch_demoquick"
    assert by_key["train_frozen_scratch_s0"].command(False)[5] == "nnUNetTrainerVoCoFrozenScratch_demoquick"
    assert "pretrain" not in by_key["train_scratch_s0"].needs + by_key["train_frozen_scratch_s0"].needs
    assert "pretrain" in by_key["train_frozen_voco_s0"].needs


@pytest.mark.parametrize("size, arms, suffix", [("default", ("voco", "scratch"), "_demo"),
                                                ("full", tuple(ARMS), "_demofull"), ("gpu", tuple(ARMS), "_demogpu")])
def test_run_sizes_train_their_arms_with_three_seeds_on_report_cases_only(tmp_path, size, arms, suffix):
    folders = DemoFolders(str(tmp_path), RUN_SIZES[size])
    trains = [s for s in build_stages(folders, "cpu") if s.key.startswith("train_")]
    assert len(trains) == 3 * len(arms) and {s.command(False)[3] for s in trains} == {"0", "1", "2"}
    assert {s.command(False)[5] for s in trains} == {f"{ARMS[a][0]}{suffix}" for a in arms}
    p = RUN_SIZES[size]
    assert not set(p.train_seeds + p.heldout_seeds) & set(p.unlabelled_seeds)
    assert not set(p.train_seeds + p.heldout_seeds + p.unlabelled_seeds) & {*range(500, 506), *range(2000, 2008),
                                                                             *range(300, 324)}  # tuning seeds
    from nnunet_voco import trainers

    budgets = {getattr(trainers, ARMS[a][0] + suffix).voco_budget for a in arms}
    assert len(budgets) == 1  # matched arms


def test_interrupted_runs_continue_and_changed_inputs_restart(folders):
    by_key = {s.key: s for s in build_stages(folders, "cpu")}
    os.makedirs(folders.pretrain_folder)
    open(os.path.join(folders.pretrain_folder, "checkpoint_latest.pth"), "w").close()
    assert by_key["pretrain"].command(False)[-1] == "--c"
    assert by_key["pretrain"].command(True)[-1] == "--overwrite"
    fold = folders.fold_folder("voco", 0)
    os.makedirs(fold)
    open(os.path.join(fold, "checkpoint_latest.pth"), "w").close()
    assert by_key["train_voco_s0"].command(False)[-1] == "--c"
    assert by_key["train_voco_s0"].command(True)[-1] == "cpu"  # fresh: nnU-Net starts over
    open(os.path.join(fold, "checkpoint_final.pth"), "w").close()
    assert by_key["train_voco_s0"].command(False)[-1] == "--val"  # only the final validation is missing


def _marker_stage(tmp_path, key: str, needs: tuple[str, ...] = ()) -> Stage:
    marker = tmp_path / f"{key}.done"
    script = f"import pathlib; print('running', {key!r}); pathlib.Path({str(marker)!r}).touch()"
    return Stage(key, f"make {marker.name}", lambda fresh: [sys.executable, "-c", script], marker.exists, needs)


def test_run_stages_reuses_outputs_unless_an_input_ran(folders, tmp_path, capsys):
    stages = [_marker_stage(tmp_path, "a"), _marker_stage(tmp_path, "b", ("a",)), _marker_stage(tmp_path, "c")]
    state = run_stages(stages, folders, load_state(folders))
    assert [state["stages"][k]["reused"] for k in "abc"] == [False, False, False]
    out = capsys.readouterr().out
    assert "running b" not in out and len(out.splitlines()) == 3  # one line per stage; output in the log
    assert "running b" in open(os.path.join(folders.run, "logs", "b.log")).read()
    (tmp_path / "a.done").unlink()
    state = run_stages(stages, folders, load_state(folders), verbose=True)
    out = capsys.readouterr().out
    assert [state["stages"][k]["reused"] for k in "abc"] == [False, False, True]  # b depends on a, c does not
    assert out.count("reused") == 1 and "running b" in out  # --verbose streams
    assert load_state(folders)["stages"]["c"]["wall_s"] >= 0  # timings of the run that made the outputs survive


def test_failed_stage_names_its_log_and_shows_its_tail(folders, tmp_path):
    script = "print('first line'); print('the cause'); raise SystemExit(3)"
    failing = Stage("boom", "fail", lambda fresh: [sys.executable, "-c", script], lambda: False)
    with pytest.raises(RuntimeError, match=r"boom failed with exit code 3.*boom\.log(.|\n)*the cause"):
        run_stages([failing], folders, load_state(folders))


def test_parallel_jobs_respect_needs_and_run_side_by_side(folders, tmp_path, capsys):
    def sleeper(key, needs=()):
        marker = tmp_path / f"{key}.done"
        script = (f"import pathlib, time; pathlib.Path({str(tmp_path / key)!r} + '.start').write_text(str(time.time())); "
                  f"time.sleep(1.0); pathlib.Path({str(marker)!r}).touch()")
        return Stage(key, key, lambda fresh: [sys.executable, "-c", script], marker.exists, needs)

    stages = [sleeper("a"), sleeper("b", ("a",)), sleeper("c", ("a",))]
    run_stages(stages, folders, load_state(folders), jobs=2)
    start = {k: float((tmp_path / f"{k}.start").read_text()) for k in "abc"}
    assert start["b"] - start["a"] >= 1.0 and start["c"] - start["a"] >= 1.0  # both waited for a
    assert abs(start["b"] - start["c"]) < 0.9  # and then ran side by side


def test_tidy_frees_what_a_rerun_does_not_need(folders, tmp_path):
    from nnunet_voco.demo.stages import PRETRAIN_STATE_FILES

    os.makedirs(folders.pretrain_folder)
    for name in PRETRAIN_STATE_FILES + ("voco_encoder.pth",):
        with open(os.path.join(folders.pretrain_folder, name), "wb") as f:
            f.write(b"x" * 2**20)
    pretrain = {s.key: s for s in build_stages(folders, "cpu")}["pretrain"]
    assert pretrain.is_done() and "(3 MiB)" in pretrain.tidy() and pretrain.tidy() == ""
    assert os.listdir(folders.pretrain_folder) == ["voco_encoder.pth"] and pretrain.is_done()


def test_splits_are_written_once(folders):
    os.makedirs(os.path.join(folders.preprocessed, folders.dataset))
    assert write_splits(folders).startswith("wrote splits_final.json")
    assert write_splits(folders) == ""  # a re-run says nothing


def test_read_dice(tmp_path):
    case = {"reference_file": "/x/VoCoDemoQuick_0003.nii.gz", "prediction_file": "/y/VoCoDemoQuick_0003.nii.gz",
            "metrics": {"1": {"Dice": 0.8}, "2": {"Dice": 0.4}, "3": {"Dice": math.nan}, "4": {"Dice": 0.6}}}
    summary = {"metric_per_case": [case], "mean": {k: {"Dice": v["Dice"]} for k, v in case["metrics"].items()},
               "foreground_mean": {"Dice": 0.6}}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))  # json writes NaN as in nnU-Net's files
    dice = read_dice(str(path))
    assert dice["per_class"] == {"liver": 0.8, "spleen": 0.4, "kidneys": None, "spine": 0.6}
    assert dice["per_case"] == {"VoCoDemoQuick_0003": pytest.approx(0.6)}


@pytest.mark.parametrize("voco, base, better, phrase", [
    ([0.50, 0.52, 0.54], [0.40, 0.41, 0.42], True, "VoCo beats the baseline by +0.110"),
    ([0.40, 0.50, 0.60], [0.45, 0.45, 0.45], False, "does NOT beat the baseline: difference +0.050"),
    ([0.30, 0.31, 0.32], [0.40, 0.41, 0.42], False, "does NOT beat the baseline: it is worse by -0.100"),
    ([0.60], [0.40], False, "within 2 SE = 0.000 over 1 seeds"),
    ([0.50, 0.51, 0.52], [0.48, 0.50, 0.52], False, "within 2 SE = 0.026 over 3 seeds"),
])
def test_verdict_states_plainly_whether_voco_wins(voco, base, better, phrase):
    result = verdict("probe", seed_stats(voco), seed_stats(base))
    assert result["voco_better"] is better and phrase in result["text"], result["text"]


def test_seed_stats_mean_sd_and_missing_runs():
    stats = seed_stats([0.2, 0.4, None])
    assert stats["mean"] == pytest.approx(0.3) and stats["sd"] == pytest.approx(0.1414, abs=1e-4)
    assert stats["n"] == 2 and stats["per_seed"] == [0.2, 0.4, None]


def _arm(values: list[float]) -> dict:
    stats = seed_stats(values)
    return {"trainer": "T", "runs": {}, "mean": stats, "per_class": {c: stats for c in CLASS_NAMES.values()}}


def test_table_shows_monitor_both_comparisons_and_costs():
    rows = [{"step": 0, "loss": 1.0}, {"step": 0, "val_position_accuracy": 0.4, "val_chance": 0.111,
                                       "val_prior": 0.25, "val_logit_gap": 0.1, "val_overlap_error": 0.3},
            {"step": 300, "val_position_accuracy": 0.7, "val_chance": 0.111, "val_prior": 0.25, "val_logit_gap": 0.3,
             "val_overlap_error": 0.2}]
    dice = {"frozen_voco": _arm([0.3, 0.31, 0.32]), "frozen_scratch": _arm([0.3, 0.3, 0.3]),
            "voco": _arm([0.5, 0.5, 0.5]), "scratch": _arm([0.5, 0.51, 0.49])}
    results = {"preset": "default", "device": "cpu", "heldout_cases": ["c"] * 8, "seeds": [0, 1, 2], "dice": dice,
               "verdicts": {f"{a}_vs_{b}": verdict(n, dice[a]["mean"], dice[b]["mean"]) for n, a, b in COMPARISONS},
               "budget": {}, "pretraining": {"steps": 300, "monitor": monitor_rows(rows)},
               "stages": {"plan": {"wall_s": 12.0, "cpu_s": 5.0, "reused": True}}}
    table = format_table(results)
    assert "SYNTHETIC" in table and "0.400 at step 0 -> 0.700 at step 300 (chance 0.111" in table
    assert "frozen-encoder probe" in table and "full fine-tuning" in table and "0.310+/-0.010" in table
    assert "per-seed mean Dice: frozen VoCo encoder [0.300 0.310 0.320]" in table
    assert "VoCo does not beat its baseline here: the encoder did learn the pretext" in table and "reused" in table
    assert "it rose by +0.300 (more than 2 SE" in table


def test_pick_slice_prefers_more_classes():
    label = np.zeros((3, 4, 4), dtype=np.uint8)
    label[0] = 1  # many voxels, one class
    label[2, 0, 0], label[2, 1, 1] = 2, 3  # two classes
    assert pick_slice(label) == 2


def test_demo_trainers_are_matched_and_seeded():
    from nnunet_voco import trainers

    for suffix in ("_demo", "_demoquick"):
        classes = [getattr(trainers, ARMS[a][0] + suffix) for a in ARMS]
        assert len({c.voco_budget for c in classes}) == 1
        assert len({c.voco_warmup_epochs for c in classes}) == 1
        assert [c.voco_load_weights for c in classes] == [True, False, True, False]
    assert trainers.nnUNetTrainerVoCoFrozen_demo.voco_budget == DEMO_BUDGET


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """One real ``voco_demo --quick`` run: (work folder, finished process, wall seconds)."""
    out = str(tmp_path_factory.mktemp("voco_demo"))
    start = time.perf_counter()
    proc = run(["voco_demo", "--quick", "--out", out, "-device", "cpu"], dict(os.environ), timeout=1800)
    return out, proc, time.perf_counter() - start


@pytest.mark.slow
def test_quick_demo_writes_table_figure_and_results(quick_demo):
    out, proc, _ = quick_demo
    assert "SYNTHETIC" in proc.stdout and "$ nnUNetv2_train 831 3d_fullres 0 -tr nnUNetTrainerVoCoFrozen" in proc.stdout
    assert "held-out position accuracy" in proc.stdout and "frozen-encoder probe" in proc.stdout
    assert "full fine-tuning" in proc.stdout and "Time per stage" in proc.stdout
    # quiet: one line per stage plus the report; nnU-Net's own output went to the stage logs
    assert len(proc.stdout.splitlines()) < 70 and "Epoch 0" not in proc.stdout, proc.stdout
    assert "Epoch 0" in open(os.path.join(out, "quick", "logs", "train_voco_s0.log")).read()
    assert "the work folder" in proc.stdout and not any(
        f in os.listdir(os.path.join(out, "nnUNet_results", "Dataset832_VoCoDemoQuickUnlabeled", "VoCo__nnUNetPlans__3d_fullres"))
        for f in ("checkpoint_latest.pth", "checkpoint_final.pth"))
    with open(os.path.join(out, "quick", "results.json")) as f:
        results = json.load(f)
    assert results["synthetic"] is True
    monitor = results["pretraining"]["monitor"]
    assert monitor[0]["step"] == 0 and monitor[-1]["step"] == 4 and 0.0 <= monitor[-1]["val_position_accuracy"] <= 1.0
    for arm in ARMS:
        run0 = results["dice"][arm]["runs"]["0"]
        values = list(run0["per_class"].values()) + [run0["mean"]]
        assert len(values) == 5 and all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in values)
    assert set(results["verdicts"]) == {"frozen_voco_vs_frozen_scratch", "voco_vs_scratch"}
    with open(results["figure"], "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    import matplotlib.image

    assert matplotlib.image.imread(results["figure"]).ndim == 3


@pytest.mark.slow
def test_second_quick_run_reuses_every_stage(quick_demo):
    out, first, first_wall = quick_demo
    start = time.perf_counter()
    second = run(["voco_demo", "--quick", "--out", out, "-device", "cpu"], dict(os.environ), timeout=600)
    wall = time.perf_counter() - start
    assert second.stdout.count("reused (outputs of an earlier run)") == 8
    assert "$ nnUNetv2" not in second.stdout
    assert wall < first_wall / 3, (wall, first_wall)
    with open(os.path.join(out, "quick", "results.json")) as f:
        assert all(r["reused"] for r in json.load(f)["stages"].values())


def test_dry_run_lists_every_stage_of_the_gpu_size_and_writes_nothing(tmp_path, capsys):
    from nnunet_voco.commands.demo import main

    out = tmp_path / "work"
    assert main(["--size", "gpu", "--dry_run", "-device", "cuda", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    stages = [line for line in lines if line.startswith("[")]
    assert len(stages) == 4 + 3 * 4 and "up to 6 at once" in "\n".join(lines)
    assert "--num_steps 10000" in stages[3] and "-device cuda" in stages[3]
    assert stages[5].startswith("[6/16] train_frozen_scratch_s0 (after plan): run $ nnUNetv2_train 861")
    assert not out.exists()


def test_quick_contradicting_size_is_a_usage_error(tmp_path):
    from nnunet_voco.commands.demo import main

    with pytest.raises(SystemExit) as e:
        main(["--quick", "--size", "full", "--out", str(tmp_path)])
    assert e.value.code == 2
