"""The artifact contract: run folder names, the .pth + .json pair, metadata reading and candidate listing."""
import errno
import json
import os

import pytest
import torch

from nnunet_voco import artifacts
from nnunet_voco.checkpoint import ENCODER_FORMAT, SCHEMA_VERSION, load_encoder
from nnunet_voco.storage.disk_errors import DiskWriteError

STATE = {"w": torch.arange(6.0).reshape(2, 3)}


def _run(results, dataset, plans="nnUNetPlans", configuration="3d_fullres", **meta):
    folder = artifacts.run_folder(dataset, plans, configuration, results=str(results))
    path = os.path.join(folder, artifacts.ENCODER_FILE)
    artifacts.write_encoder(path, STATE, {"encoder_family": "cnn", "datasets": [dataset], **meta})
    return path


def test_run_folder_names():
    assert artifacts.run_folder_name("nnUNetPlans", "3d_fullres") == "VoCo__nnUNetPlans__3d_fullres"
    assert artifacts.run_folder("Dataset001_X", "P", "2d", results="/r") == "/r/Dataset001_X/VoCo__P__2d"
    assert artifacts.meta_path("/a/voco_encoder.pth") == "/a/" + artifacts.ENCODER_META_FILE
    assert artifacts.meta_path("/a/imported.pt") == "/a/imported.json"


def test_pair_carries_the_same_meta(tmp_path):
    path = _run(tmp_path, "Dataset001_X", spacing=(1.0, 2.0, 3.0))
    state, meta = load_encoder(path)
    with open(artifacts.meta_path(path)) as f:
        sidecar = json.load(f)
    assert sidecar == meta and meta["spacing"] == [1.0, 2.0, 3.0]
    assert (meta["format"], meta["schema_version"]) == (ENCODER_FORMAT, SCHEMA_VERSION)
    torch.testing.assert_close(state["w"], STATE["w"])
    assert sorted(os.listdir(os.path.dirname(path))) == [artifacts.ENCODER_META_FILE, artifacts.ENCODER_FILE]


def test_read_meta_prefers_the_sidecar_and_falls_back_to_the_pth(tmp_path):
    path = _run(tmp_path, "Dataset001_X", steps=7)
    with open(artifacts.meta_path(path), "w") as f:
        json.dump({"steps": 8}, f)
    assert artifacts.read_meta(path) == {"steps": 8}
    with open(artifacts.meta_path(path), "w") as f:
        f.write("{cut")
    assert artifacts.read_meta(path)["steps"] == 7
    os.remove(artifacts.meta_path(path))
    assert artifacts.read_meta(path)["steps"] == 7


def test_failed_sidecar_leaves_no_temp_and_replaces_nothing(tmp_path, monkeypatch):
    path = _run(tmp_path, "Dataset001_X", steps=1)
    before = os.path.getmtime(path)

    def broken(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artifacts.json, "dump", broken)
    with pytest.raises(DiskWriteError, match=r"cannot write .*voco_encoder\.json \(No space left on device\)"):
        artifacts.write_encoder(path, STATE, {"steps": 2})
    assert sorted(os.listdir(os.path.dirname(path))) == [artifacts.ENCODER_META_FILE, artifacts.ENCODER_FILE]
    assert os.path.getmtime(path) == before and load_encoder(path)[1]["steps"] == 1


def test_list_encoders_needs_both_files_and_the_run_folder_name(tmp_path):
    complete = _run(tmp_path, "Dataset001_X")
    os.remove(_run(tmp_path, "Dataset002_Y"))  # a sidecar without weights
    os.remove(artifacts.meta_path(_run(tmp_path, "Dataset003_Z")))  # weights without a sidecar
    _run(tmp_path, "Dataset004_W", plans="nnUNetResEncUNetMPlans")
    found = artifacts.list_encoders("nnUNetPlans", "3d_fullres", results=str(tmp_path))
    assert [a.path for a in found] == [complete] and found[0].meta["datasets"] == ["Dataset001_X"]
    assert [a.meta["datasets"] for a in artifacts.list_encoders("nnUNetResEncUNetMPlans", "3d_fullres",
                                                               results=str(tmp_path))] == [["Dataset004_W"]]


def test_lookup_takes_the_newest_covering_run_of_the_family(tmp_path, monkeypatch):
    from nnunet_voco.finetune.weights_lookup import find_voco_weights

    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    monkeypatch.delenv("nnUNet_voco_weights", raising=False)
    old = _run(tmp_path, "Dataset001_X")
    new = _run(tmp_path, "Dataset009_Pool", datasets=["Dataset009_Pool"], plans_source_datasets=["Dataset001_X"])
    _run(tmp_path, "Dataset008_S", encoder_family="swin", datasets=["Dataset001_X"])
    os.utime(old, (1, 1))
    choice = find_voco_weights("Dataset001_X", "nnUNetPlans", "3d_fullres", "cnn")
    assert (choice.path, choice.others) == (new, [old])
    with pytest.raises(FileNotFoundError, match=r"\$nnUNet_results/\*/VoCo__nnUNetPlans__2d/; run `voco_pretrain -d 1"):
        find_voco_weights("Dataset001_X", "nnUNetPlans", "2d", "cnn")
