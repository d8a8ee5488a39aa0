"""Tests for the unlabelled pool (nnunet_voco.pool) and the voco_preprocess_unlabeled command.

A tiny CT-like TARGET (4 cases) is planned with the real ``nnUNetv2_plan_and_preprocess``; pool cases
must then equal nnU-Net's own preprocessing of the same image as a TARGET case.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import script
from nnunet_voco.pool.case import body_mask
from nnunet_voco.pool.create import create_unlabeled_pool
from nnunet_voco.pool.inputs import InputCase, find_input_cases
from nnunet_voco.pool.provenance import read_pool_provenance
from nnunet_voco.pool.report import PoolReport
from nnunet_voco.pool.runner import run_cases

TARGET_ID = 901
ANATOMICAL = os.path.join(os.path.dirname(pytest.importorskip("nibabel").__file__), "tests", "data", "anatomical.nii")


def _ct_volume(shape, rng):
    """Air at -1000 HU around a soft-tissue ellipsoid at about 40 HU with noise. Shape (z, y, x)."""
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = sum(g ** 2 for g in grid) < 0.7
    return (np.where(inside, 40.0, -1000.0) + rng.normal(0, 20, shape)).astype(np.float32)


def _write(path, array, spacing=(0.9, 0.9, 2.0)):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing[:array.ndim])
    sitk.WriteImage(image, path)


def _write_dicom_series(folder, array):
    import locale

    import SimpleITK as sitk

    # SimpleITK's DICOM writer (GDCM) leaves the process in the "C" locale: every later subprocess output this
    # process decodes would then be read as ASCII (tqdm's bars fail). Seen with SimpleITK 2.x; restored here.
    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write_dicom_slices(sitk, folder, array)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_dicom_slices(sitk, folder, array):
    os.makedirs(folder)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(array.shape[0]):
        slice_ = sitk.GetImageFromArray(array[z].astype(np.int16))
        slice_.SetSpacing((0.8, 0.8))
        for tag, value in (("0020|000e", "1.2.826.0.1.3680043.2.1125.1"), ("0020|0013", str(z)),
                           ("0020|0032", f"0\\0\\{2.5 * z}"), ("0008|0060", "CT")):
            slice_.SetMetaData(tag, value)
        writer.SetFileName(os.path.join(folder, f"{z:03d}.dcm"))
        writer.Execute(slice_)


@pytest.fixture(scope="module")
def nnunet_env(tmp_path_factory):
    """nnU-Net folders holding a planned TARGET; the three variables are set for the module."""
    root = tmp_path_factory.mktemp("nnunet")
    env = {k: str(root / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    raw = os.path.join(env["nnUNet_raw"], f"Dataset{TARGET_ID}_Toy")
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(raw, sub))
    rng = np.random.default_rng(0)
    for i in range(4):
        image = _ct_volume((32, 48, 48), rng)
        label = np.zeros(image.shape, np.uint8)
        label[10:20, 16:28, 16:28] = 1
        image[label == 1] += 200.0
        _write(os.path.join(raw, "imagesTr", f"toy_{i:03d}_0000.nii.gz"), image)
        _write(os.path.join(raw, "labelsTr", f"toy_{i:03d}.nii.gz"), label)
    with open(os.path.join(raw, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "CT"}, "labels": {"background": 0, "cube": 1}, "numTraining": 4,
                   "file_ending": ".nii.gz"}, f)
    env["full"] = {**os.environ, **env, "nnUNet_def_n_proc": "1"}
    subprocess.run([script("nnUNetv2_plan_and_preprocess"), "-d", str(TARGET_ID), "-c", "3d_fullres", "-np", "1", "-npfp",
                    "1"], env=env["full"], check=True, capture_output=True)
    with pytest.MonkeyPatch.context() as mp:
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            mp.setenv(k, env[k])
        yield env


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Good images in four formats and a DICOM series, plus a corrupt, a 2-D and an absurd-spacing file."""
    folder = str(tmp_path_factory.mktemp("unlabelled"))
    rng = np.random.default_rng(1)
    shutil.copy(ANATOMICAL, os.path.join(folder, "anatomical.nii"))
    _write(os.path.join(folder, "gen_a.nrrd"), _ct_volume((20, 40, 36), rng), (0.8, 0.8, 2.5))
    _write(os.path.join(folder, "gen_b.mha"), _ct_volume((24, 30, 30), rng), (1.2, 1.2, 1.5))
    _write(os.path.join(folder, "gen_c_0000.nii.gz"), _ct_volume((16, 40, 40), rng))
    _write(os.path.join(folder, "slice.nii.gz"), _ct_volume((40, 40), rng))
    _write(os.path.join(folder, "thick.nii.gz"), _ct_volume((12, 20, 20), rng), (1.0, 1.0, 60.0))
    with open(os.path.join(folder, "broken.nii.gz"), "wb") as f:
        f.write(rng.bytes(2000))
    _write_dicom_series(os.path.join(folder, "series1"), _ct_volume((12, 24, 24), rng))
    return folder


@pytest.fixture(scope="module")
def pool(nnunet_env, inputs):
    report = create_unlabeled_pool([inputs], TARGET_ID, 902, dicom=True, progress=False)
    return report


def _load_case(report, case_id):
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    data, seg, _, props = nnUNetDatasetBlosc2(os.path.join(report.folder, "nnUNetPlans_3d_fullres")).load_case(case_id)
    return np.asarray(data[:]), np.asarray(seg[:]), props


@pytest.mark.parametrize("case_id,file_name", [("gen_a", "gen_a.nrrd"), ("anatomical", "anatomical.nii"),
                                               ("gen_c", "gen_c_0000.nii.gz")])
def test_case_equals_nnunet_preprocessing(nnunet_env, inputs, pool, case_id, file_name):
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    target = os.path.join(nnunet_env["nnUNet_preprocessed"], f"Dataset{TARGET_ID}_Toy")
    pm = PlansManager(os.path.join(target, "nnUNetPlans.json"))
    cm = pm.get_configuration("3d_fullres")
    expected, _, expected_props = DefaultPreprocessor(verbose=False).run_case(
        [os.path.join(inputs, file_name)], None, pm, cm, os.path.join(target, "dataset.json"))
    data, seg, props = _load_case(pool, case_id)
    assert np.array_equal(data, expected)
    assert props["bbox_used_for_cropping"] == expected_props["bbox_used_for_cropping"]
    assert set(np.unique(seg)) <= {-1, 0, 1} and len(props["class_locations"][1]) > 0


def test_pool_folder_layout(nnunet_env, pool):
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    assert pool.dataset_name == "Dataset902_ToyUnlabeled" and maybe_convert_to_dataset_name(902) == pool.dataset_name
    with open(os.path.join(pool.folder, "nnUNetPlans.json")) as f:
        assert json.load(f)["dataset_name"] == pool.dataset_name
    with open(os.path.join(pool.folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    assert dataset_json["numTraining"] == 5 and dataset_json["labels"] == {"background": 0, "cube": 1}
    assert "body mask" in dataset_json["voco_unlabeled_pool"]["seg"]
    provenance = read_pool_provenance(pool.folder)
    assert provenance["plans_source_dataset"] == f"Dataset{TARGET_ID}_Toy" and provenance["num_cases"] == 5
    assert read_pool_provenance(os.path.join(nnunet_env["nnUNet_preprocessed"], f"Dataset{TARGET_ID}_Toy")) is None
    assert not os.path.exists(os.path.join(pool.folder, ".voco_tmp"))


def test_bad_files_are_skipped_with_reasons(pool):
    assert sorted(pool.written) == ["anatomical", "gen_a", "gen_b", "gen_c", "series1"]
    reasons = {os.path.basename(s["file"]): s["reason"] for s in pool.skipped}
    assert reasons["broken.nii.gz"].startswith("unreadable: ")
    assert reasons["slice.nii.gz"].startswith("2-D image")
    assert reasons["thick.nii.gz"].startswith("implausible spacing")
    assert read_pool_provenance(pool.folder)["skipped"] == pool.skipped
    assert "skipped:\n  " in pool.summary() and "next: voco_pretrain -d 902 901" in pool.summary()


def test_resume_rewrites_only_unfinished_cases(nnunet_env, inputs, tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("gen_a.nrrd", "gen_b.mha"):
        shutil.copy(os.path.join(inputs, name), folder / name)
    first = create_unlabeled_pool([str(folder)], TARGET_ID, 903, progress=False)
    data_folder = os.path.join(first.folder, "nnUNetPlans_3d_fullres")
    kept = os.stat(os.path.join(data_folder, "gen_b.b2nd")).st_mtime_ns
    os.remove(os.path.join(data_folder, "gen_a.b2nd"))  # what a run killed between two os.replace calls leaves
    os.makedirs(os.path.join(first.folder, ".voco_tmp"))
    again = create_unlabeled_pool([str(folder)], TARGET_ID, "Dataset903_ToyUnlabeled", progress=False)
    assert again.written == ["gen_a"] and again.already_present == ["gen_b"]
    assert os.stat(os.path.join(data_folder, "gen_b.b2nd")).st_mtime_ns == kept
    assert read_pool_provenance(first.folder)["num_cases"] == 2


@pytest.mark.parametrize("target,output,configuration,message", [
    (TARGET_ID, 904, "2d_lowres", "configuration '2d_lowres' is not in"),
    (TARGET_ID, "Dataset_bad", "3d_fullres", "neither an id"),
    (TARGET_ID, TARGET_ID, "3d_fullres", "already used by Dataset901_Toy"),
    (TARGET_ID, "Dataset901_Toy", "3d_fullres", "already exists and is not an unlabelled pool"),
    (TARGET_ID, 905, "3d_fullres", "already used by Dataset905_Other"),
    (999, 904, "3d_fullres", "TARGET dataset 999 not found"),
    (TARGET_ID, 902, "2d", "is a pool built from Dataset901_Toy / nnUNetPlans / 3d_fullres, not"),
])
def test_user_errors(nnunet_env, inputs, pool, target, output, configuration, message):
    os.makedirs(os.path.join(nnunet_env["nnUNet_raw"], "Dataset905_Other"), exist_ok=True)
    with pytest.raises(ValueError, match=message):
        create_unlabeled_pool([inputs], target, output, configuration=configuration, progress=False)


def test_empty_input_folder_and_unset_variable_are_errors(nnunet_env, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="no images found"):
        create_unlabeled_pool([str(tmp_path)], TARGET_ID, 904, progress=False)
    with pytest.raises(ValueError, match="plans 'nnUNetResEncUNetMPlans' not found for Dataset901_Toy"):
        create_unlabeled_pool([str(tmp_path)], TARGET_ID, 904, plans_name="nnUNetResEncUNetMPlans")
    monkeypatch.delenv("nnUNet_preprocessed")
    with pytest.raises(ValueError, match="nnUNet_preprocessed is not set"):
        create_unlabeled_pool([str(tmp_path)], TARGET_ID, 904, progress=False)


def test_channel_grouping(tmp_path):
    for sub, names in (("x", ["a_0000.nrrd", "a_0001.nrrd", "b_0000.nrrd", "c.mha", "notes.txt"]),
                       ("y", ["a_0000.nii.gz", "a_0001.nii.gz"])):
        (tmp_path / sub).mkdir()
        for name in names:
            (tmp_path / sub / name).touch()
    cases, skipped = find_input_cases([str(tmp_path / "x"), str(tmp_path / "y")], num_channels=2)
    assert [(c.case_id, [os.path.basename(f) for f in c.files]) for c in cases] == [
        ("x_a", ["a_0000.nrrd", "a_0001.nrrd"]), ("y_a", ["a_0000.nii.gz", "a_0001.nii.gz"])]
    reasons = {os.path.basename(s["file"]): s["reason"] for s in skipped}
    assert reasons["b_0000.nrrd"].startswith("wrong channel count") and "no _0000 channel suffix" in reasons["c.mha"]


def test_dicom_files_outside_every_readable_series_are_listed(tmp_path):
    """--dicom: a series with one damaged slice keeps its readable slices, and the damaged file is listed; a
    folder of damaged .dcm files used to vanish without a word."""
    rng = np.random.default_rng(3)
    _write_dicom_series(str(tmp_path / "good"), _ct_volume((6, 16, 16), rng))
    _write_dicom_series(str(tmp_path / "partly"), _ct_volume((6, 16, 16), rng))
    (tmp_path / "partly" / "003.dcm").write_bytes(rng.bytes(500))
    (tmp_path / "broken").mkdir()
    for i in range(2):
        (tmp_path / "broken" / f"{i:03d}.dcm").write_bytes(rng.bytes(300))
    cases, skipped = find_input_cases([str(tmp_path)], 1, dicom=True)
    assert [(c.case_id, len(c.files[0])) for c in cases] == [("good", 6), ("partly", 5)]
    listed = sorted(os.path.relpath(s["file"], tmp_path) for s in skipped)
    assert listed == ["broken/000.dcm", "broken/001.dcm", "partly/003.dcm"]
    assert all(s["reason"].startswith("not part of a readable DICOM series") for s in skipped)


def test_body_mask_rules():
    ct = np.full((1, 4, 4, 4), -1000.0)
    ct[0, 1:3, 1:3, 1:3] = 30.0
    assert body_mask(ct, ["CTNormalization"]).sum() == 8
    mr = np.zeros((1, 4, 4, 4))
    mr[0, :2] = 5.0
    mr[0, :1] = 100.0
    assert body_mask(mr, ["ZScoreNormalization"]).sum() == 16  # Otsu separates 100 from 5; zeros never body


def _exit_on_crash_case(case):
    if case.case_id == "crash":
        os._exit(1)
    return None if case.case_id != "bad" else "bad reason"


@pytest.mark.slow
def test_dead_worker_skips_only_its_case(tmp_path):
    cases = [InputCase(i, (i,), i, str(tmp_path)) for i in ("a", "crash", "b", "bad", "c")]
    report = PoolReport("Dataset902_X", "Dataset901_Y", str(tmp_path), "nnUNetPlans", "3d_fullres")
    run_cases(cases, _exit_on_crash_case, 2, report, progress=False)
    assert sorted(report.written) == ["a", "b", "c"]
    assert sorted((s["file"], s["reason"][:10]) for s in report.skipped) == [("bad", "bad reason"),
                                                                              ("crash", "worker pro")]


@pytest.mark.slow
def test_console_script(nnunet_env, inputs, tmp_path):
    run = subprocess.run([script("voco_preprocess_unlabeled"), "-i", inputs, "-d", str(TARGET_ID), "-o", "906", "-np", "2"],
                         env=nnunet_env["full"], capture_output=True, encoding="utf-8",
                         errors="replace")
    assert run.returncode == 0, run.stderr
    assert "4 cases written, 3 skipped, 0 already present" in run.stdout
    assert "next: voco_pretrain -d 906 901" in run.stdout
    raw = os.path.join(nnunet_env["nnUNet_raw"], "Dataset907_Unplanned")
    os.makedirs(raw)
    with open(os.path.join(raw, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1}, "file_ending": ".nii.gz"}, f)
    run = subprocess.run([sys.executable, "-m", "nnunet_voco.commands.preprocess_unlabeled", "-i", inputs, "-d", "907",
                          "-o", "908"], env=nnunet_env["full"], capture_output=True, encoding="utf-8",
                         errors="replace")
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1
    assert "`nnUNetv2_plan_and_preprocess -d 907 -c 3d_fullres`" in run.stderr
