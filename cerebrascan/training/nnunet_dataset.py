"""nnU-Net conventions for BraTS cases: region labels, file names, coarser grids, progress.

Maths and naming only; ``nnunet_pipeline.py`` reads the case folders and writes the files.

The labels follow nnU-Net's own BraTS setup (``nnunetv2/dataset_conversion/
Dataset137_BraTS21.py``): the network predicts the overlapping BraTS regions with a sigmoid
each (whole tumour, tumour core, enhancing tumour) and ``regions_class_order`` turns them back
into labels, ET inside TC inside WT. Dataset137 renumbers BraTS 2021's labels first (edema 2 ->
1, necrosis 1 -> 2, 4 -> 3); this project keeps the BraTS 2023 numbers (NETC 1, SNFH 2, ET 3),
so the same regions read WT = (1, 2, 3), TC = (1, 3), ET = (3,) and the class order is
(SNFH, NETC, ET) = (2, 1, 3).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from schemas.model_spec import MODALITIES

REGION_LABELS: dict[str, int | list[int]] = {
    "background": 0,
    "whole tumor": [1, 2, 3],
    "tumor core": [1, 3],
    "enhancing tumor": [3],
}
REGIONS_CLASS_ORDER = [2, 1, 3]
FILE_ENDING = ".nii.gz"
BRATS_LABELS = (0, 1, 2, 3)


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """nnU-Net's ``DatasetXXX_Name`` folder name.

    Raises:
        ValueError: the id is outside 1..999 or the name is not alphanumeric (with ``_``/``-``).
    """
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"nnU-Net dataset id must be 1..999, got {dataset_id}")
    if not name or not all(ch.isalnum() or ch in "_-" for ch in name):
        raise ValueError(f"nnU-Net dataset name must be alphanumeric (or _ -), got {name!r}")
    return f"Dataset{dataset_id:03d}_{name}"


def image_file_name(case_id: str, channel: int) -> str:
    """``<case>_<channel:04d>.nii.gz``, as nnU-Net's ``imagesTr`` wants it."""
    return f"{case_id}_{channel:04d}{FILE_ENDING}"


def region_dataset_json(num_training: int, description: str) -> dict[str, Any]:
    """``dataset.json`` for region-based BraTS training on the four BraTS 2023 contrasts."""
    return {
        "channel_names": {str(index): name for index, name in enumerate(MODALITIES)},
        "labels": REGION_LABELS,
        "regions_class_order": REGIONS_CLASS_ORDER,
        "numTraining": num_training,
        "file_ending": FILE_ENDING,
        "description": description,
    }


def brats_labels(segmentation: npt.NDArray[Any], case_id: str) -> npt.NDArray[np.uint8]:
    """A segmentation in BraTS 2023 numbers: BraTS 2021's enhancing label 4 becomes 3.

    Raises:
        ValueError: a label outside {0, 1, 2, 3, 4}, or both 3 and 4 present.
    """
    values = {int(v) for v in np.unique(segmentation)}
    unknown = sorted(values - {0, 1, 2, 3, 4})
    if unknown:
        raise ValueError(f"case {case_id}: segmentation labels {unknown} are not BraTS labels")
    if 3 in values and 4 in values:
        raise ValueError(f"case {case_id}: segmentation has both label 3 and label 4")
    labels = np.asarray(segmentation, dtype=np.uint8).copy()
    labels[labels == 4] = 3
    return labels


def downsample_case(
    images: npt.NDArray[np.float32],
    labels: npt.NDArray[np.uint8],
    affine: npt.NDArray[np.float64],
    factor: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8], npt.NDArray[np.float64]]:
    """Average ``factor``-cubed blocks of the images; each block's label is its majority.

    For quick CPU runs on phantoms; a real BraTS dataset is converted at ``factor`` 1 (as is).

    Args:
        images: (channels, x, y, z) intensities.
        labels: (x, y, z) BraTS labels 0..3.
        affine: voxel-to-world affine of the input grid.
        factor: block edge in voxels (1 returns the inputs unchanged).

    Returns:
        The coarser images, labels and the affine of the block centres.

    Raises:
        ValueError: ``factor`` below 1, or a grid smaller than one block.
    """
    if factor < 1:
        raise ValueError(f"downsample factor must be >= 1, got {factor}")
    if factor == 1:
        return images, labels, affine
    shape = tuple(s // factor for s in labels.shape)
    if min(shape) < 1:
        raise ValueError(f"grid {labels.shape} is smaller than a {factor}^3 block")
    crop = tuple(slice(0, s * factor) for s in shape)
    blocks = (shape[0], factor, shape[1], factor, shape[2], factor)
    coarse_images = np.stack(
        [image[crop].reshape(blocks).mean(axis=(1, 3, 5)) for image in images]
    ).astype(np.float32)
    counts = np.stack(
        [(labels[crop] == value).reshape(blocks).sum(axis=(1, 3, 5)) for value in BRATS_LABELS]
    )
    coarse_labels = np.asarray(BRATS_LABELS, dtype=np.uint8)[np.argmax(counts, axis=0)]
    coarse_affine = np.array(affine, dtype=np.float64)
    coarse_affine[:3, 3] = affine[:3, :3] @ np.full(3, (factor - 1) / 2) + affine[:3, 3]
    coarse_affine[:3, :3] = affine[:3, :3] * factor
    return coarse_images, coarse_labels, coarse_affine


# nnU-Net's per-epoch logging (``checkpoint["logging"]``): our metric name -> its key
_PROGRESS_SERIES = {
    "train_loss": "train_losses",
    "val_loss": "val_losses",
    "pseudo_dice": "mean_fg_dice",
    "pseudo_dice_ema": "ema_fg_dice",
    "learning_rate": "lrs",
}


def progress_metrics(
    logging: dict[str, Any], region_names: list[str]
) -> list[tuple[str, float, int]]:
    """(metric, value, epoch) for every epoch nnU-Net logged: losses, pseudo Dice (mean, moving
    average and per region or class), learning rate and epoch seconds.

    Args:
        logging: the ``logging`` dict of an nnU-Net v2 checkpoint (its ``LocalLogger`` lists).
        region_names: names of the foreground regions/classes in the network's output order.
    """
    rows: list[tuple[str, float, int]] = []
    for name, key in _PROGRESS_SERIES.items():
        for epoch, value in enumerate(logging.get(key) or []):
            rows.append((name, float(value), epoch))
    for epoch, values in enumerate(logging.get("dice_per_class_or_region") or []):
        for index, value in enumerate(values):
            label = region_names[index] if index < len(region_names) else str(index)
            rows.append((f"pseudo_dice_{label.replace(' ', '_')}", float(value), epoch))
    starts = logging.get("epoch_start_timestamps") or []
    ends = logging.get("epoch_end_timestamps") or []
    for epoch, (start, end) in enumerate(zip(starts, ends)):
        rows.append(("epoch_seconds", float(end) - float(start), epoch))
    return rows
