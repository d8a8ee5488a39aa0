"""Crop geometry: exact overlap numbers worked out by hand, invariants and errors."""
import numpy as np
import pytest

from nnunet_voco.voco import geometry

BOXES_221 = geometry.base_crop_offsets((4, 4, 4), (2, 2, 1))


@pytest.mark.parametrize("offset, expected", [
    ((0, 0, 0), [1.0, 0.0, 0.0, 0.0]),
    ((1, 0, 0), [0.75, 0.0, 0.25, 0.0]),
    ((2, 2, 0), [0.25, 0.25, 0.25, 0.25]),
    ((4, 4, 0), [0.0, 0.0, 0.0, 1.0]),
    ((0, 3, 0), [0.25, 0.75, 0.0, 0.0]),
])
def test_overlaps_worked_by_hand(offset, expected):
    got = geometry.overlap_matrix(np.array([offset]), BOXES_221, (4, 4, 4))[0]
    np.testing.assert_allclose(got, expected, atol=1e-7)


def test_base_order_is_x_major():
    offsets = geometry.base_crop_offsets((2, 3, 4), (2, 2, 2))
    assert offsets.tolist() == [[0, 0, 0], [0, 0, 4], [0, 3, 0], [0, 3, 4], [2, 0, 0], [2, 0, 4], [2, 3, 0], [2, 3, 4]]


@pytest.mark.parametrize("grid, crop", [((3, 3, 1), (8, 8, 8)), ((2, 2, 2), (4, 6, 8)), ((1, 3, 3), (5, 7, 9))])
def test_rows_sum_to_one_inside_window(grid, crop):
    rng = np.random.default_rng(0)
    window = geometry.window_size(crop, grid)
    targets = geometry.sample_target_offsets(window, crop, 200, rng)
    y = geometry.overlap_matrix(targets, geometry.base_crop_offsets(crop, grid), crop)
    assert y.shape == (200, int(np.prod(grid)))
    np.testing.assert_allclose(y.sum(1), 1.0, atol=1e-6)
    assert (targets >= 0).all() and (targets <= np.array(window) - np.array(crop)).all()


def test_seeded_offsets_are_reproducible():
    a = geometry.sample_target_offsets((12, 12, 4), (4, 4, 4), 5, np.random.default_rng(42))
    b = geometry.sample_target_offsets((12, 12, 4), (4, 4, 4), 5, np.random.default_rng(42))
    assert a.tolist() == b.tolist()
    assert (a[:, 2] == 0).all()  # one grid cell along z: targets span it


@pytest.mark.parametrize("spacing, grid", [
    ((2.5, 0.8, 0.8), (1, 3, 3)), ((0.8, 0.8, 3.0), (3, 3, 1)), ((1.0, 1.0, 1.0), (1, 3, 3)), ((0.8, 2.0, 0.8), (3, 1, 3)),
])
def test_default_grid_splits_the_in_plane_axes(spacing, grid):
    assert geometry.default_grid(spacing) == grid


def test_indivisible_crop_names_the_axis():
    with pytest.raises(ValueError, match=r"20 on axis 1; pass --crop_size 8 16 16 \(the nearest multiples"):
        geometry.validate_crop_size((8, 20, 16), (4, 8, 8))


def test_every_bad_axis_is_named_at_once_by_index_and_spacing():
    """``--crop_size 8 7 7`` on (z, y, x) data at 2.5 x 1 x 1 mm: both bad axes in one message, named as the
    plans order them (the preprocessed array axes), with their spacing; the suggestion fixes both."""
    with pytest.raises(ValueError) as error:
        geometry.validate_crop_size((8, 7, 7), (1, 2, 2), (2.5, 1.0, 1.0))
    assert str(error.value) == ("crop size 8 x 7 x 7 is not divisible by the encoder's total stride 1 x 2 x 2: 7 on "
                                "axis 1 (1 mm), 7 on axis 2 (1 mm); pass --crop_size 8 8 8 (the nearest multiples "
                                "of the stride)")
    assert geometry.axis_label(0, (2.5, 1.0, 1.0)) == "axis 0 (2.5 mm)"


@pytest.mark.parametrize("crop, divisor, deepest, options", [
    ((32, 32, 32), (32, 32, 32), "1 x 1 x 1", "64 32 32, 32 64 32 or 32 32 64"),  # nnssl's ResEnc-L: 5 x stride 2
    ((4, 32, 32), (4, 32, 32), "1 x 1 x 1", "8 32 32, 4 64 32 or 4 32 64"),  # anisotropic plans: stride 1 x 2 x 2 first
])
def test_a_single_voxel_deepest_map_is_refused_with_the_smallest_crops_that_work(crop, divisor, deepest, options):
    with pytest.raises(ValueError) as error:
        geometry.check_deepest_map(crop, divisor)
    message = str(error.value)
    assert f"deepest feature map {deepest} voxel" in message and message.endswith(f"--crop_size {options}")
    for option in options.replace(" or", ",").split(", "):  # each suggestion passes; half of it does not
        geometry.check_deepest_map(tuple(map(int, option.split())), divisor)
    geometry.check_deepest_map(crop[:2] + (2 * crop[2],), divisor)


def test_fitted_layouts_obey_the_deepest_map_rule():
    crop, grid, _ = geometry.fitted_layout((32, 32, 32), (32, 32, 32), (1, 1, 1), (32, 32, 32))
    geometry.check_deepest_map(crop, (32, 32, 32))  # the fit doubles an axis itself
    assert geometry.deepest_map(crop, (32, 32, 32)) != (1, 1, 1)


@pytest.mark.parametrize("kwargs, match", [
    ({"crop_size": (8, 8), "grid": (1, 1, 1)}, "3 entries"),
    ({"crop_size": (8, 8, 8), "grid": (1, 0, 1)}, r"axis 1 below 1"),
])
def test_bad_grid_or_crop(kwargs, match):
    with pytest.raises(ValueError, match=match):
        geometry.window_size(**kwargs)


def test_crop_larger_than_window_is_refused():
    with pytest.raises(ValueError, match="exceeds the window 8 x 8 x 4 on axis 2;"):
        geometry.sample_target_offsets((8, 8, 4), (4, 4, 8), 1, np.random.default_rng(0))


@pytest.mark.parametrize("median, patch, spacing, divisor, crop, grid", [
    # chest CT planned at 2 mm (isotropic): the shortest axis stays whole, 3x3 over the other two
    ((166, 180, 90), (160, 192, 80), (2.0, 2.0, 2.0), (32, 32, 16), (32, 32, 80), (3, 3, 1)),
    # abdomen-like plan (3 x 0.8 x 0.8 mm): the coarse axis stays whole
    ((100, 512, 512), (80, 192, 160), (3.0, 0.8, 0.8), (16, 32, 32), (80, 160, 160), (1, 3, 3)),
    # the demo phantom: window = whole image
    ((16, 48, 48), (16, 48, 48), (2.5, 1.0, 1.0), (4, 8, 8), (16, 16, 16), (1, 3, 3)),
    # too small for 3x3 crops of the minimum size: 2x2
    ((40, 40, 40), (40, 40, 40), (1.0, 1.0, 1.0), (8, 8, 8), (40, 16, 16), (1, 2, 2)),
])
def test_fitted_layout_fits_the_median_case(median, patch, spacing, divisor, crop, grid):
    got_crop, got_grid, rule = geometry.fitted_layout(median, patch, spacing, divisor)
    assert (got_crop, got_grid) == (crop, grid)
    window = geometry.window_size(got_crop, got_grid)
    assert all(w <= m for w, m in zip(window, median)) and "padded" not in rule
    assert all(c <= p and c % d == 0 for c, p, d in zip(got_crop, patch, divisor))


def test_fitted_layout_pads_only_when_nothing_fits():
    crop, grid, rule = geometry.fitted_layout((20, 20, 20), (20, 20, 20), (1, 1, 1), (4, 4, 4))
    assert grid == (1, 2, 2) and crop == (20, 16, 16) and "padded" in rule


def test_fitted_layout_keeps_a_given_grid():
    crop, grid, _ = geometry.fitted_layout((16, 48, 48), (16, 48, 48), (2.5, 1, 1), (4, 8, 8), grid=(1, 2, 2))
    assert grid == (1, 2, 2) and crop == (16, 24, 24)


def test_isotropic_data_leaves_the_shortest_axis_whole():
    assert geometry.default_grid((1, 1, 1), 3, (200, 90, 180)) == (3, 1, 3)
