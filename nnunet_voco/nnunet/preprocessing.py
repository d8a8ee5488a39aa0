"""nnU-Net's own preprocessing, applied to raw images that are not part of an nnU-Net raw dataset.

The unlabelled pool (:mod:`nnunet_voco.pool`) preprocesses scans exactly as
``nnUNetv2_plan_and_preprocess`` would preprocess a case of the planned dataset whose plans it
borrows. The pieces of nnU-Net it needs for that are wrapped here: the image readers, the nonzero
mask, the configuration's preprocessor (``run_case_npy``: transpose, crop to nonzero, normalise,
resample) and the Blosc2 case files (``nnUNetDatasetBlosc2``) with the chunk and block sizes that
``DefaultPreprocessor.run_case_save`` chooses.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def image_reader(plans_manager, file_endings: Sequence[str | None]) -> type:
    """The plans' image reader if it supports every file ending, else nnU-Net's ``SimpleITKIO``.

    Args:
        plans_manager: nnU-Net ``PlansManager`` of the planned dataset.
        file_endings: the ending of each channel's file; None for a DICOM series (a list of files).

    Returns:
        An nnU-Net reader/writer class. ``SimpleITKIO`` reads every format SimpleITK knows, and DICOM
        series given as a file list.
    """
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    reader = plans_manager.image_reader_writer_class
    if all(ending in reader.supported_file_endings for ending in file_endings):
        return reader
    return SimpleITKIO


def read_images(reader: type, image_files: Sequence) -> tuple[np.ndarray, dict]:
    """Read one case with an nnU-Net reader class.

    Args:
        reader: the class :func:`image_reader` chose.
        image_files: one entry per channel: a path, or a tuple of DICOM slice files.

    Returns:
        ``(data, properties)`` as nnU-Net's ``read_images`` returns them.

    Shapes:
        data: (C, X, Y, Z).
    """
    return reader().read_images([list(f) if isinstance(f, tuple) else f for f in image_files])


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """nnU-Net's nonzero mask: the region ``crop_to_nonzero`` keeps (holes filled).

    Shapes:
        data: (C, X, Y, Z); returned: (X, Y, Z), boolean.
    """
    from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask

    return create_nonzero_mask(data)


def preprocess_case(data: np.ndarray, seg: np.ndarray, properties: dict, plans_manager, configuration_manager,
                    dataset_json: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """Run the configuration's preprocessor (``run_case_npy``) on an image read by an nnU-Net reader.

    Args:
        data: the image as read.
        seg: a label map of the same spatial shape.
        properties: the reader's properties (spacing etc.).
        plans_manager: nnU-Net ``PlansManager``.
        configuration_manager: nnU-Net ``ConfigurationManager`` of the configuration to produce.
        dataset_json: the dataset.json dict whose labels ``class_locations`` are computed for.

    Returns:
        ``(data, seg, properties)`` as nnU-Net's ``run_case`` returns them.
    """
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    return preprocessor.run_case_npy(data, seg, properties, plans_manager, configuration_manager, dataset_json)


def blosc2_layout(data: np.ndarray, seg: np.ndarray, patch_size: Sequence[int]) -> dict:
    """Chunk and block sizes of a Blosc2 case, chosen by nnU-Net's heuristic for this patch size.

    Returns:
        Keyword arguments ``chunks``, ``blocks``, ``chunks_seg``, ``blocks_seg`` of :func:`save_blosc2_case`.
    """
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import comp_blosc2_params

    blocks, chunks = comp_blosc2_params(data.shape, tuple(patch_size), data.itemsize)
    blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, tuple(patch_size), seg.itemsize)
    return {"chunks": chunks, "blocks": blocks, "chunks_seg": chunks_seg, "blocks_seg": blocks_seg}


def save_blosc2_case(data: np.ndarray, seg: np.ndarray, properties: dict, path_without_ending: str,
                     layout: dict) -> None:
    """Write ``.b2nd``, ``_seg.b2nd`` and ``.pkl`` of one case with ``nnUNetDatasetBlosc2.save_case``.

    Args:
        data: preprocessed image.
        seg: preprocessed label map.
        properties: the preprocessor's properties.
        path_without_ending: file name without ``.b2nd``.
        layout: what :func:`blosc2_layout` returned.
    """
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    nnUNetDatasetBlosc2.save_case(data, seg, properties, path_without_ending, **layout)


def blosc2_case_identifiers(data_folder: str) -> list[str]:
    """The case identifiers nnU-Net lists in a Blosc2 data folder (by their ``.b2nd`` files)."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    return nnUNetDatasetBlosc2.get_identifiers(data_folder)
