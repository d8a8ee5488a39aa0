"""One synthetic CT-like abdominal case: the phantom's anatomy and intensity model.

Everything here is synthetic. No patient data is used or imitated beyond coarse textbook anatomy, and
nothing is tuned to make pre-training look good. The phantom exists so that the demo can run the real
nnU-Net pipeline (``nnUNetv2_plan_and_preprocess``, pre-training, fine-tuning) offline in minutes.
Results on it say that the code runs, not how well VoCo works on real CT.

Layout, in image terms. Arrays are (z, y, x) as ``SimpleITK.GetArrayFromImage`` returns them; the
written files have identity direction, so in ITK's LPS frame +x is the patient's left, +y posterior
and +z superior. Displayed with row = y and column = x, a slice reads like a radiological axial view:
anterior at the top, the patient's right on the image's left.

- Body: an elliptic cylinder spanning all slices, soft tissue (~ +40 HU) inside a subcutaneous fat
  rim (~ -100 HU), air (-1000 HU) outside.
- 1 liver: a large ellipsoid on the patient's right (low x), anterior to mid, upper half (~ +60 HU).
- 2 spleen: a smaller ellipsoid on the patient's left (high x), posterior-lateral, upper (~ +50 HU).
- 3 kidneys: two ellipsoids either side of the spine, posterior, mid-z; enhanced cortex (~ +150 HU)
  around a darker medulla (~ +40 HU); one label for both. The right kidney sits slightly lower.
- 4 spine: a vertebral body on the posterior midline plus a neural arch and spinous process,
  cancellous (~ +400 HU) with a bright cortex (~ +700 HU), with intervertebral discs (~ +90 HU,
  unlabelled) and a waist that repeat along z.
- Unlabelled: the aorta (~ +200 HU) just left-anterior of the spine and bowel gas pockets
  (~ -800 HU) in the anterior abdomen.

Each case varies organ radii (+-15 %), in-plane rotation (+-10 degrees), a smooth surface wobble,
position (a few voxels), organ intensity (+-6 HU), a global offset (+-10 HU) and noise level
(Gaussian, 15-25 HU, slightly correlated in-plane). Overlaps are resolved by a fixed paint order
(later wins): fat, soft tissue, gas, liver, spleen, kidneys, aorta, spine. Some cases can keep a
shorter z range (``min_slices``) to vary volume sizes.

Why a consistent layout: VoCo (arXiv:2402.17300) learns by predicting where a random target crop lies
relative to a grid of base crops of the same volume. That task is only learnable when the same
structure tends to sit in the same place across volumes, as in real CT. A phantom with random organ
positions would give the pretext task nothing to exploit.

The files are written by :mod:`nnunet_voco.demo.phantom`.
"""
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
from scipy.ndimage import gaussian_filter

GENERATOR_VERSION = 1
LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidneys": 3, "spine": 4}
DEFAULT_SHAPE = (40, 96, 96)
DEFAULT_SPACING = (2.5, 1.0, 1.0)
_MIN_AXIS = 16  # below this the organs are a few voxels wide and the layout is meaningless


@dataclass(frozen=True)
class PhantomCase:
    """One generated case.

    Attributes:
        image: float32 HU values clipped to [-1024, 3071], shape (z, y, x) (``GetArrayFromImage`` order).
        label: uint8 labels (values of ``LABELS``), same shape as ``image``.
        body_mask: bool mask of the body outline (fat rim included), same shape as ``image``.
        spacing: voxel size in mm as (x, y, z), SimpleITK's ``SetSpacing`` order (reverse of the array).
        seed: the seed the case was generated from.
    """

    image: np.ndarray
    label: np.ndarray
    body_mask: np.ndarray
    spacing: tuple[float, float, float]
    seed: int


def check_case_arguments(shape: tuple[int, ...], spacing: tuple[float, ...], min_slices: int | None,
                         seed: int = 0) -> None:
    """Raises ``ValueError`` on a bad seed, shape, spacing or ``min_slices`` (see :func:`generate_case`)."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed {seed!r} must be a non-negative integer")
    if len(shape) != 3 or any(not isinstance(s, (int, np.integer)) or s < _MIN_AXIS for s in shape):
        raise ValueError(f"shape {shape!r} must be 3 integers (z, y, x), each >= {_MIN_AXIS}")
    if len(spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise ValueError(f"spacing {spacing!r} must be 3 positive finite mm values in (z, y, x) order")
    if min_slices is not None and not _MIN_AXIS <= min_slices <= shape[0]:
        raise ValueError(f"min_slices {min_slices!r} must lie in [{_MIN_AXIS}, shape[0]={shape[0]}]")


def _ellipsoid(grid: tuple, center: np.ndarray, radii: np.ndarray, angle: float = 0.0,
               wobble: tuple[np.ndarray, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Returns (mask, f) of an ellipsoid rotated by ``angle`` in the xy plane; f < 1 is inside.

    ``center`` and ``radii`` are (x, y, z) in normalised coordinates; ``wobble`` is a wave vector
    and phase that bend the surface by +-15 %, so organs are not perfect ellipsoids.
    """
    # Python floats, not np.float64: NumPy 2 would otherwise promote the float32 grids (2x slower).
    (cx, cy, cz), (rx, ry, rz) = map(float, center), map(float, radii)
    zz, yy, xx = grid
    dx, dy, dz = xx - cx, yy - cy, zz - cz
    c, s = float(np.cos(angle)), float(np.sin(angle))
    f = ((c * dx + s * dy) / rx) ** 2 + ((c * dy - s * dx) / ry) ** 2 + (dz / rz) ** 2
    bound = 1.0
    if wobble is not None:
        (kx, ky, kz), phase = map(float, wobble[0]), float(wobble[1])
        bound = 1.0 + 0.15 * np.sin(kx * dx + ky * dy + kz * dz + phase)
    return f < bound, f


def _organ(rng: np.random.Generator, center: tuple, radii: tuple, angle_deg: float, *,
           voxel: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, tuple]:
    """Draws one organ's per-case center, radii, angle and wobble around its nominal values."""
    jitter = np.clip(rng.normal(0.0, 1.5, 3), -3.0, 3.0) * voxel  # a few voxels
    r = np.asarray(radii) * rng.uniform(0.85, 1.15, 3)
    angle = np.deg2rad(angle_deg + rng.uniform(-10.0, 10.0))
    direction = rng.normal(size=3)
    wave = 4.0 * direction / np.linalg.norm(direction)
    return np.asarray(center) + jitter, r, angle, (wave, rng.uniform(0, 2 * np.pi))


def _sample_anatomy(rng: np.random.Generator, voxel: np.ndarray) -> dict:
    """Draws one case's anatomy around the fixed nominal layout, in normalised (x, y, z) units."""
    organ = partial(_organ, rng, voxel=voxel)
    return dict(  # keyword order fixes the draw order, hence the determinism
        body_axes=np.array([0.86, 0.68]) * rng.uniform(0.92, 1.04, 2),
        fat=rng.uniform(0.06, 0.10),
        body_y=0.08 + rng.normal(0.0, 1.0) * voxel[1],
        liver=organ((-0.42, -0.02, 0.30), (0.34, 0.38, 0.60), -20.0),
        spleen=organ((0.52, 0.22, 0.40), (0.15, 0.22, 0.30), 30.0),
        kidneys=[organ((-0.36, 0.36, -0.20), (0.11, 0.14, 0.30), 15.0),  # the right one lower
                 organ((0.36, 0.36, -0.10), (0.11, 0.14, 0.30), -15.0)],
        aorta=np.array([0.08, 0.18]) + rng.normal(0.0, 1.0, 2) * voxel[:2],
        spine=(float(rng.normal(0.0, 0.7) * voxel[0]), rng.uniform(0.50, 0.60), rng.uniform(0.0, 1.0)),
        gas=[organ((rng.uniform(-0.15, 0.45), rng.uniform(-0.5, -0.2), rng.uniform(-0.9, 0.9)),
                   (0.05, 0.05, 0.10), 0.0) for _ in range(int(rng.integers(3, 7)))],
        hu={k: v + rng.normal(0.0, 6.0) for k, v in dict(
            soft=40.0, fat=-100.0, liver=60.0, spleen=50.0, cortex=150.0, medulla=40.0, aorta=200.0).items()},
    )


def _render(p: dict, grid: tuple, out_shape: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paints the noise-free image, the labels and the body mask; later structures win."""
    zs, ys, xs = grid
    taper = 1.0 + 0.04 * zs  # slightly wider superiorly
    ell = (xs / (p["body_axes"][0] * taper)) ** 2 + ((ys - p["body_y"]) / (p["body_axes"][1] * taper)) ** 2
    shrink = p["body_axes"].min()
    body = np.broadcast_to(ell < 1.0, out_shape)
    # Everything but fat and soft tissue stays 0.04 inside the fat rim, so organs are clearly inside.
    deep = np.broadcast_to(ell < (1.0 - (p["fat"] + 0.04) / shrink) ** 2, out_shape)
    image = np.full(out_shape, -1000.0, dtype=np.float32)
    label = np.zeros(out_shape, dtype=np.uint8)

    def paint(mask: np.ndarray, value: np.ndarray | float, lab: int, clip: bool = True) -> None:
        mask = np.broadcast_to(mask, out_shape) & (deep if clip else True)
        image[mask] = value[mask] if isinstance(value, np.ndarray) else value
        label[mask] = lab

    hu = p["hu"]
    paint(body, hu["fat"], 0, clip=False)
    paint(ell < (1.0 - p["fat"] / shrink) ** 2, hu["soft"], 0, clip=False)
    for gas in p["gas"]:
        paint(_ellipsoid(grid, *gas[:3])[0], -800.0, 0)
    paint(_ellipsoid(grid, *p["liver"])[0], hu["liver"], LABELS["liver"])
    paint(_ellipsoid(grid, *p["spleen"])[0], hu["spleen"], LABELS["spleen"])
    for kidney in p["kidneys"]:
        mask, f = _ellipsoid(grid, *kidney)
        paint(mask, hu["cortex"], LABELS["kidneys"])
        paint(mask & (f < 0.4), hu["medulla"], LABELS["kidneys"])
    paint((xs - p["aorta"][0]) ** 2 + (ys - p["aorta"][1]) ** 2 < 0.055**2, hu["aorta"], 0)
    _paint_spine(paint, grid, *p["spine"])
    return image, label, np.ascontiguousarray(body)


def _paint_spine(paint: Callable, grid: tuple, x0: float, period: float, phase: float) -> None:
    """Paints vertebrae (label 4) with discs between them, repeating along z with ``period``."""
    zs, ys, xs = grid
    cycle = np.mod(zs / period + phase, 1.0)
    disc = cycle < 0.18
    waist = 1.0 + 0.08 * np.cos(2.0 * np.pi * cycle)
    body_r2 = ((xs - x0) ** 2 + (ys - 0.38) ** 2) / (0.11 * waist) ** 2
    arch_r2 = ((xs - x0) ** 2 + (ys - 0.56) ** 2) / 0.08**2
    canal = arch_r2 < 0.25  # radius 0.04
    process = ((xs - x0) / 0.03) ** 2 + ((ys - 0.66) / 0.06) ** 2 < 1.0
    bone = ((body_r2 < 1.0) | (arch_r2 < 1.0) | process) & ~canal & ~disc
    # Cortex: brighter towards the rim of the vertebral body and in the thin posterior elements.
    hu = np.where(body_r2 < 1.0, 400.0 + 300.0 * np.minimum(body_r2, 1.0) ** 2, 650.0)
    paint((body_r2 < 1.0) & disc, 90.0, 0)
    paint(canal, 20.0, 0)
    paint(bone, hu.astype(np.float32), LABELS["spine"])


def generate_case(seed: int, shape: tuple[int, int, int] = DEFAULT_SHAPE,
                  spacing: tuple[float, float, float] = DEFAULT_SPACING,
                  min_slices: int | None = None) -> PhantomCase:
    """Generates one deterministic synthetic abdominal CT-like case.

    Anatomy lives in normalised coordinates (each axis spans [-1, 1] over ``shape``), so the layout
    holds for any shape. Same arguments give bit-identical arrays; only
    ``numpy.random.default_rng(seed)`` is used.

    Args:
        seed: Non-negative integer seed.
        shape: Full volume size in voxels as (z, y, x), the array order.
        spacing: Voxel size in mm as (z, y, x), the array order. ``PhantomCase.spacing`` holds it
            reversed, in SimpleITK's (x, y, z) order.
        min_slices: If set, keep a random contiguous run of ``min_slices`` to ``shape[0]`` slices, like
            a shorter scan range. The anatomy does not move, so superior or inferior parts may be cut.

    Returns:
        The case; ``image``, ``label`` and ``body_mask`` have shape (n_slices, shape[1], shape[2]).

    Raises:
        ValueError: If ``seed``, ``shape``, ``spacing`` or ``min_slices`` is invalid.
    """
    check_case_arguments(tuple(shape), tuple(spacing), min_slices, seed)
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    voxel = np.array([2.0 / nx, 2.0 / ny, 2.0 / nz])  # one voxel in normalised (x, y, z) units
    anatomy = _sample_anatomy(rng, voxel)  # drawn first, so min_slices never changes the anatomy
    offset, noise_sd = rng.uniform(-10.0, 10.0), rng.uniform(15.0, 25.0)
    n_slices = nz if min_slices is None else int(rng.integers(min_slices, nz + 1))
    z0 = int(rng.integers(0, nz - n_slices + 1))
    # Open (broadcastable) coordinate grids, built once and shared by every structure.
    zs = ((np.arange(z0, z0 + n_slices) + 0.5) * voxel[2] - 1.0).astype(np.float32)[:, None, None]
    ys = ((np.arange(ny) + 0.5) * voxel[1] - 1.0).astype(np.float32)[None, :, None]
    xs = ((np.arange(nx) + 0.5) * voxel[0] - 1.0).astype(np.float32)[None, None, :]
    grid = (zs, ys, xs)
    out_shape = (n_slices, ny, nx)
    image, label, body = _render(anatomy, grid, out_shape)
    # Partial-volume blur, then Gaussian noise correlated in-plane (as CT reconstruction kernels do).
    image = gaussian_filter(image, sigma=(0.4, 0.6, 0.6))
    noise = gaussian_filter(rng.standard_normal(out_shape, dtype=np.float32), sigma=(0.0, 0.6, 0.6))
    image += noise * np.float32(noise_sd / noise.std()) + np.float32(offset)
    np.clip(image, -1024.0, 3071.0, out=image)
    return PhantomCase(image=image, label=label, body_mask=body,
                       spacing=(float(spacing[2]), float(spacing[1]), float(spacing[0])), seed=int(seed))
