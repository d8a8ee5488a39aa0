"""Tests for the synthetic phantom behind ``voco_demo`` (nnunet_voco/demo/phantom.py)."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_voco.demo.phantom import LABELS, generate_case, write_nnunet_raw_dataset, write_unlabelled_images

SMALL = dict(shape=(20, 32, 32), spacing=(2.5, 1.0, 1.0))  # keeps the writer tests fast


def _centroid(label: np.ndarray, value: int) -> np.ndarray:
    return np.argwhere(label == value).mean(axis=0)  # (z, y, x)


def test_same_seed_gives_identical_arrays():
    a, b = generate_case(7), generate_case(7)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.label, b.label)
    assert np.array_equal(a.body_mask, b.body_mask)


def test_different_seeds_differ():
    a, b = generate_case(1), generate_case(2)
    assert not np.array_equal(a.image, b.image)
    assert not np.array_equal(a.label, b.label)


def test_default_case_types_shapes_and_spacing_order():
    case = generate_case(0)
    assert case.image.shape == case.label.shape == case.body_mask.shape == (40, 96, 96)
    assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
    assert case.spacing == (1.0, 1.0, 2.5)  # SimpleITK (x, y, z) order, reversed from the (z, y, x) argument
    assert case.image.min() >= -1024 and case.image.max() <= 3071
    assert case.image[0, 0, 0] < -900  # air in the corner


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_every_class_is_present(seed):
    counts = np.bincount(generate_case(seed).label.ravel(), minlength=len(LABELS))
    assert len(counts) == len(LABELS)
    assert (counts[1:] > 0).all(), counts


@pytest.mark.parametrize("seed", [0, 11, 12])
def test_labels_lie_inside_the_body(seed):
    case = generate_case(seed)
    assert not np.any((case.label > 0) & ~case.body_mask)
    assert np.percentile(case.image[case.label > 0], 1) > -300  # tissue, far above air


@pytest.mark.parametrize("name, low, high", [
    ("liver", 30, 100), ("spleen", 20, 90), ("kidneys", 60, 200), ("spine", 300, 800),
])
def test_class_intensities_are_ct_like(name, low, high):
    case = generate_case(3)
    assert low < np.median(case.image[case.label == LABELS[name]]) < high


def test_layout_is_consistent_across_seeds():
    for seed in range(10):
        label = generate_case(seed).label
        liver, spleen = _centroid(label, LABELS["liver"]), _centroid(label, LABELS["spleen"])
        kidneys, spine = _centroid(label, LABELS["kidneys"]), _centroid(label, LABELS["spine"])
        assert liver[2] < 48 < spleen[2], seed  # patient right = low x, left = high x
        assert liver[0] > kidneys[0], seed  # liver superior (higher z) to the kidneys
        assert spine[1] > liver[1] and spine[1] > 55, seed  # spine posterior (high y)
        assert abs(spine[2] - 47.5) < 3, seed  # spine on the midline
        kidney_x = np.argwhere(label == LABELS["kidneys"])[:, 2]
        assert (kidney_x < spine[2] - 8).any() and (kidney_x > spine[2] + 8).any(), seed  # one each side


def test_min_slices_shortens_scan_but_keeps_anatomy():
    sizes = {generate_case(s, min_slices=32).image.shape[0] for s in range(12)}
    assert sizes <= set(range(32, 41)) and len(sizes) > 1
    full, short = generate_case(5).label, generate_case(5, min_slices=16).label
    n = len(short)
    assert n < 40  # seed 5 does draw a shorter scan
    # The anatomy does not move: the short scan's labels are a slab of the full scan's.
    assert any(np.array_equal(full[z:z + n], short) for z in range(41 - n))


@pytest.mark.parametrize("kwargs, match", [
    (dict(shape=(40, 96)), "shape"),
    (dict(shape=(8, 96, 96)), "shape"),
    (dict(shape=(40.0, 96, 96)), "shape"),
    (dict(spacing=(2.5, 0.0, 1.0)), "spacing"),
    (dict(spacing=(2.5, 1.0)), "spacing"),
    (dict(min_slices=41), "min_slices"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_case(0, **kwargs)


def test_negative_seed_raises():
    with pytest.raises(ValueError, match="seed -1"):
        generate_case(-1)


def test_written_dataset_has_nnunet_structure(tmp_path):
    folder = write_nnunet_raw_dataset(str(tmp_path), 7, "Phantom", [0, 1], unlabelled_seeds=[1, 5],
                                      test_seeds=[2], **SMALL)
    assert folder == str(tmp_path / "Dataset007_Phantom")
    listing = {d: sorted(os.listdir(os.path.join(folder, d)))
               for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "imagesUnlabelled")}
    assert listing["imagesTr"] == ["Phantom_0000_0000.nii.gz", "Phantom_0001_0000.nii.gz"]
    assert listing["labelsTr"] == ["Phantom_0000.nii.gz", "Phantom_0001.nii.gz"]
    assert listing["imagesTs"] == ["Phantom_0002_0000.nii.gz"]
    assert listing["labelsTs"] == ["Phantom_0002.nii.gz"]
    assert listing["imagesUnlabelled"] == ["Phantom_unlabelled_0000_0000.nii.gz",
                                           "Phantom_unlabelled_0001_0000.nii.gz"]
    with open(os.path.join(folder, "dataset.json"), encoding="utf-8") as f:
        meta = json.load(f)
    assert meta["channel_names"] == {"0": "CT"} and meta["labels"] == LABELS
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    assert "synthetic" in meta["description"].lower()


def test_written_files_round_trip(tmp_path):
    folder = write_nnunet_raw_dataset(str(tmp_path), 8, "Phantom", [3], test_seeds=[4], **SMALL)
    image = sitk.ReadImage(os.path.join(folder, "imagesTs", "Phantom_0001_0000.nii.gz"))
    label = sitk.ReadImage(os.path.join(folder, "labelsTs", "Phantom_0001.nii.gz"))
    assert image.GetSpacing() == label.GetSpacing() == (1.0, 1.0, 2.5)
    case = generate_case(4, **SMALL)
    assert np.array_equal(sitk.GetArrayFromImage(label), case.label)
    assert np.abs(sitk.GetArrayFromImage(image) - case.image).max() <= 0.5  # stored as rounded int16


def test_rerun_skips_finished_files_and_drops_stale_ones(tmp_path):
    folder = write_nnunet_raw_dataset(str(tmp_path), 9, "Phantom", [0, 1, 2], **SMALL)
    first = os.path.join(folder, "imagesTr", "Phantom_0000_0000.nii.gz")
    os.utime(first, (0, 0))  # a rewrite would reset the mtime
    write_nnunet_raw_dataset(str(tmp_path), 9, "Phantom", [0, 1], **SMALL)
    assert os.path.getmtime(first) == 0
    labels = sorted(os.listdir(os.path.join(folder, "labelsTr")))
    assert labels == ["Phantom_0000.nii.gz", "Phantom_0001.nii.gz"]  # the stale third case is gone
    write_nnunet_raw_dataset(str(tmp_path), 9, "Phantom", [5, 1], **SMALL)  # new seed for case 0
    assert os.path.getmtime(first) > 0


def test_unlabelled_images_are_written_without_labels(tmp_path):
    out = write_unlabelled_images(str(tmp_path / "pool"), [10, 11, 12], prefix="pool", **SMALL)
    assert sorted(os.listdir(out)) == [f"pool_{i:04d}_0000.nii.gz" for i in range(3)]


@pytest.mark.parametrize("kwargs, match", [
    (dict(labelled_seeds=[0], test_seeds=[0]), "shared: \\[0\\]"),
    (dict(labelled_seeds=[0], unlabelled_seeds=[3], test_seeds=[3]), "shared: \\[3\\]"),
    (dict(labelled_seeds=[]), "labelled seed"),
    (dict(labelled_seeds=[1, 1]), "distinct"),
    (dict(labelled_seeds=[0], dataset_id=1000), "dataset_id"),
    (dict(labelled_seeds=[0], name="bad name"), "name"),
])
def test_bad_dataset_arguments_raise(tmp_path, kwargs, match):
    kwargs = dict(dict(dataset_id=1, name="Phantom"), **kwargs)
    with pytest.raises(ValueError, match=match):
        write_nnunet_raw_dataset(str(tmp_path), **kwargs)
    assert not os.listdir(tmp_path)  # nothing written before the check
