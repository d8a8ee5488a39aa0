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
from nnunet_voco.demo_figure import pick_slice
from nnunet_voco.demo_report import format_table, read_dice
from nnunet_voco.demo_stages import PRESETS, DemoFolders, Stage, build_stages, write_splits
from nnunet_voco.demo_workflow import load_state, run_stages

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def folders(tmp_path) -> DemoFolders:
    return DemoFolders(str(tmp_path), PRESETS["quick"])


def test_splits_train_on_all_labelled_cases(folders):
    os.makedirs(os.path.join(folders.preprocessed, folders.dataset))
    write_splits(folders)
    with open(os.path.join(folders.preprocessed, folders.dataset, "splits_final.json")) as f:
        splits = json.load(f)
    assert splits == [{"train": ["VoCoDemoQuick_0000", "VoCoDemoQuick_0001", "VoCoDemoQuick_0002"],
                       "val": ["VoCoDemoQuick_0000"]}]
    assert folders.test_ids() == ["VoCoDemoQuick_0003"]  # the phantom writer numbers test cases after training


def test_stages_order_commands_and_matched_trainers(folders):
    stages = build_stages(folders, "cpu")
    keys = [s.key for s in stages]
    assert keys == ["data", "plan", "pool", "pretrain", "train_voco", "predict_voco", "evaluate_voco",
                    "train_scratch", "predict_scratch", "evaluate_scratch"]
    for i, stage in enumerate(stages):
        assert set(stage.needs) <= set(keys[:i])
    by_key = {s.key: s for s in stages}
    assert by_key["data"].command(False)[:2] == ["python", "-c"] and by_key["data"].action is not None
    assert by_key["pretrain"].command(False)[:4] == ["voco_pretrain", "-d", "812", "811"]
    voco, scratch = by_key["train_voco"].command(False), by_key["train_scratch"].command(False)
    assert voco == ["nnUNetv2_train", "811", "3d_fullres", "0", "-tr", "nnUNetTrainerVoCo_demoquick", "-device", "cpu"]
    assert scratch == [c.replace("VoCo_", "VoCoScratch_") for c in voco]
    assert "pretrain" not in by_key["train_scratch"].needs


def test_interrupted_runs_continue_and_changed_inputs_restart(folders):
    by_key = {s.key: s for s in build_stages(folders, "cpu")}
    os.makedirs(folders.pretrain_folder)
    open(os.path.join(folders.pretrain_folder, "checkpoint_latest.pth"), "w").close()
    assert by_key["pretrain"].command(False)[-1] == "--c"
    assert by_key["pretrain"].command(True)[-1] == "--overwrite"
    os.makedirs(folders.fold_folder("voco"))
    open(os.path.join(folders.fold_folder("voco"), "checkpoint_latest.pth"), "w").close()
    assert by_key["train_voco"].command(False)[-1] == "--c"
    assert by_key["train_voco"].command(True)[-1] == "cpu"  # fresh: nnU-Net starts over


def _marker_stage(tmp_path, key: str, needs: tuple[str, ...] = ()) -> Stage:
    marker = tmp_path / f"{key}.done"
    script = f"import pathlib; print('running {key}'); pathlib.Path({str(marker)!r}).touch()"
    return Stage(key, f"make {marker.name}", lambda fresh: [sys.executable, "-c", script], marker.exists, needs)


def test_run_stages_reuses_outputs_unless_an_input_ran(folders, tmp_path, capsys):
    stages = [_marker_stage(tmp_path, "a"), _marker_stage(tmp_path, "b", ("a",)), _marker_stage(tmp_path, "c")]
    state = run_stages(stages, folders, load_state(folders))
    assert [state["stages"][k]["reused"] for k in "abc"] == [False, False, False]
    assert "running b" in capsys.readouterr().out  # streamed
    (tmp_path / "a.done").unlink()
    state = run_stages(stages, folders, load_state(folders))
    out = capsys.readouterr().out
    assert [state["stages"][k]["reused"] for k in "abc"] == [False, False, True]  # b depends on a, c does not
    assert out.count("reusing") == 1 and "running b" in out
    assert load_state(folders)["stages"]["c"]["wall_s"] >= 0  # timings of the run that made the outputs survive


def test_failed_stage_names_its_log(folders, tmp_path):
    failing = Stage("boom", "fail", lambda fresh: [sys.executable, "-c", "raise SystemExit(3)"], lambda: False)
    with pytest.raises(RuntimeError, match=r"boom failed with exit code 3.*boom\.log"):
        run_stages([failing], folders, load_state(folders))


def test_read_dice_and_table(tmp_path):
    case = {"reference_file": "/x/VoCoDemoQuick_0003.nii.gz", "prediction_file": "/y/VoCoDemoQuick_0003.nii.gz",
            "metrics": {"1": {"Dice": 0.8}, "2": {"Dice": 0.4}, "3": {"Dice": math.nan}, "4": {"Dice": 0.6}}}
    summary = {"metric_per_case": [case], "mean": {k: {"Dice": v["Dice"]} for k, v in case["metrics"].items()},
               "foreground_mean": {"Dice": 0.6}}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))  # json writes NaN as in nnU-Net's files
    dice = read_dice(str(path))
    assert dice["per_class"] == {"liver": 0.8, "spleen": 0.4, "kidneys": None, "spine": 0.6}
    assert dice["per_case"] == {"VoCoDemoQuick_0003": pytest.approx(0.6)}
    results = {"preset": "quick", "device": "cpu", "test_cases": ["VoCoDemoQuick_0003"], "budget": {"voco": {}},
               "dice": {"voco": dice, "scratch": dict(dice, mean=0.5)}, "pretraining": {"steps": 4},
               "stages": {"plan": {"wall_s": 12.0, "cpu_s": 5.0, "reused": True}}}
    table = format_table(results)
    assert "SYNTHETIC" in table and "kidneys" in table and "n/a" in table
    assert "+0.100" in table and "reused" in table


def test_pick_slice_prefers_more_classes():
    label = np.zeros((3, 4, 4), dtype=np.uint8)
    label[0] = 1  # many voxels, one class
    label[2, 0, 0], label[2, 1, 1] = 2, 3  # two classes
    assert pick_slice(label) == 2


def test_demo_trainers_are_matched():
    from nnunet_voco.trainers import (nnUNetTrainerVoCo_demo, nnUNetTrainerVoCo_demoquick,
                                      nnUNetTrainerVoCoScratch_demo, nnUNetTrainerVoCoScratch_demoquick)

    for voco, scratch in ((nnUNetTrainerVoCo_demo, nnUNetTrainerVoCoScratch_demo),
                          (nnUNetTrainerVoCo_demoquick, nnUNetTrainerVoCoScratch_demoquick)):
        assert voco.voco_demo_budget == scratch.voco_demo_budget
        assert voco.voco_warmup_epochs == scratch.voco_warmup_epochs
        assert voco.voco_load_weights and not scratch.voco_load_weights


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
    assert "SYNTHETIC" in proc.stdout and "$ nnUNetv2_train 811 3d_fullres 0" in proc.stdout
    assert "VoCo-pretrained" in proc.stdout and "Time per stage" in proc.stdout
    with open(os.path.join(out, "quick", "results.json")) as f:
        results = json.load(f)
    assert results["synthetic"] is True
    for arm in ("voco", "scratch"):
        values = list(results["dice"][arm]["per_class"].values()) + [results["dice"][arm]["mean"]]
        assert len(values) == 5 and all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in values)
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
    assert second.stdout.count("reusing the outputs") == 10
    assert "$ nnUNetv2" not in second.stdout
    assert wall < first_wall / 3, (wall, first_wall)
    with open(os.path.join(out, "quick", "results.json")) as f:
        assert all(r["reused"] for r in json.load(f)["stages"].values())
