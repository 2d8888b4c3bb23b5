"""Training cases on the network grid, and random patches drawn from them (maths only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from cerebrascan.imaging.preprocess import preprocess_images
from cerebrascan.inputs.study import Study


@dataclass(frozen=True)
class TrainingCase:
    """Preprocessed images ``(C, x, y, z)`` and label indices ``(x, y, z)`` on the model grid."""

    images: npt.NDArray[np.float32]
    labels: npt.NDArray[np.uint8]
    foreground: npt.NDArray[np.int64]
    """Coordinates (N, 3) of tumour voxels, to centre foreground patches on."""


def to_training_case(
    study: Study,
    labels: npt.NDArray[np.uint8],
    target_spacing: tuple[float, float, float],
    output_labels: list[int],
) -> TrainingCase:
    """Preprocess a study exactly as serving does and bring its labels onto the same grid."""
    case = preprocess_images(study.images, study.spacing, target_spacing)
    cropped = labels[case.crop_box]
    factors = [n / o for n, o in zip(case.data.shape[1:], cropped.shape)]
    resampled = ndimage.zoom(cropped, factors, order=0, mode="nearest", grid_mode=True)
    index_of = np.zeros(256, dtype=np.uint8)
    for index, value in enumerate(output_labels):
        index_of[value] = index
    indices = index_of[resampled]
    foreground = np.argwhere(indices > 0)
    return TrainingCase(images=case.data, labels=indices, foreground=foreground)


def sample_patch(
    case: TrainingCase,
    patch_size: tuple[int, int, int],
    rng: np.random.Generator,
    *,
    foreground: bool,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """A random patch (zero-padded where it leaves the volume), centred on tumour if asked."""
    spatial = np.asarray(case.labels.shape)
    patch = np.asarray(patch_size)
    if foreground and len(case.foreground):
        centre = case.foreground[rng.integers(len(case.foreground))]
        start = centre - patch // 2 + rng.integers(-patch // 4, patch // 4 + 1)
    else:
        start = np.array([rng.integers(0, max(1, s - p + 1)) for s, p in zip(spatial, patch)])
    start = np.clip(start, np.minimum(0, spatial - patch), np.maximum(0, spatial - patch))
    images = np.zeros((case.images.shape[0], *patch_size), dtype=np.float32)
    labels = np.zeros(patch_size, dtype=np.uint8)
    src = tuple(slice(max(0, s), min(d, s + p)) for s, p, d in zip(start, patch, spatial))
    dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start))
    images[(slice(None), *dst)] = case.images[(slice(None), *src)]
    labels[dst] = case.labels[src]
    return images, labels


def augment(
    images: npt.NDArray[np.float32], labels: npt.NDArray[np.uint8], rng: np.random.Generator
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """Random flips, per-channel intensity scale/shift and gamma-like contrast, and noise."""
    for axis in range(3):
        if rng.random() < 0.5:
            images = np.flip(images, axis=axis + 1)
            labels = np.flip(labels, axis=axis)
    images = images.copy()
    inside = images[0] != 0
    for channel in range(images.shape[0]):
        scale = rng.uniform(0.85, 1.15)
        shift = rng.uniform(-0.15, 0.15)
        images[channel][inside] = images[channel][inside] * scale + shift
    if rng.random() < 0.3:
        images += rng.normal(0.0, rng.uniform(0.0, 0.1), size=images.shape).astype(np.float32)
    return np.ascontiguousarray(images), np.ascontiguousarray(labels)
