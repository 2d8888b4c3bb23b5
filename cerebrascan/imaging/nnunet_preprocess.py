"""nnU-Net v2's preprocessing and export maths, re-done in numpy for imported models.

Follows ``nnunetv2`` 2.8 (``DefaultPreprocessor.run_case_npy``, ``crop_to_nonzero``, the
normalisation schemes, ``resample_data_or_seg_to_shape`` and
``convert_predicted_logits_to_segmentation_with_correct_shape``) step by step, so an imported
model served here matches ``nnUNetPredictor`` on the same checkpoint. No torch, no nnunetv2:
serving stays light. The parity is checked by ``tests/test_nnunet_parity.py``.

Axis conventions: studies here are (x, y, z) arrays as nibabel reads them; nnU-Net reads NIfTI
with SimpleITK, i.e. (z, y, x), then applies ``transpose_forward``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.ndimage import binary_fill_holes, map_coordinates
from skimage.transform import resize

from schemas.model_spec import ChannelNormalisation, ModelSpec, Resampling

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class NnunetCase:
    """A case on the network grid, with what is needed to invert nnU-Net's preprocessing."""

    data: FloatArray
    """(channels, *spatial) float32 in network axis order."""
    bbox: tuple[tuple[int, int], ...]
    """Crop box in network axis order (before resampling)."""
    shape_before_cropping: tuple[int, ...]
    shape_after_cropping: tuple[int, ...]
    original_spacing: tuple[float, ...]
    """Input spacing in network axis order."""


def _forward_axes(spec: ModelSpec) -> list[int]:
    """Our (x, y, z) axis feeding each network axis: reverse to (z, y, x), then transpose."""
    return [2 - t for t in spec.transpose_forward]


def create_nonzero_mask(data: FloatArray) -> npt.NDArray[np.bool_]:
    """Voxels non-zero in any channel, holes filled (nnU-Net's ``create_nonzero_mask``)."""
    mask = np.any(data != 0, axis=0)
    return np.asarray(binary_fill_holes(mask), dtype=bool)


def bbox_of(mask: npt.NDArray[np.bool_]) -> tuple[tuple[int, int], ...]:
    """Half-open bounding box of a non-empty mask (``acvl_utils`` ``get_bbox_from_mask``)."""
    if not mask.any():
        raise ValueError("cannot crop: every voxel of every channel is zero")
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        box.append((int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def normalise_channel(
    image: FloatArray, mask: npt.NDArray[np.bool_], scheme: ChannelNormalisation
) -> FloatArray:
    """One channel through nnU-Net's normalisation ``scheme`` (in float32, as nnU-Net)."""
    eps = 1e-8
    image = image.astype(np.float32, copy=True)
    if scheme.scheme == "ZScoreNormalization":
        if scheme.use_mask:
            values = image[mask]
            mean, std = values.mean(), values.std()
            image[mask] = (values - mean) / max(std, eps)
        else:
            mean, std = image.mean(), image.std()
            image -= mean
            image /= max(std, eps)
    elif scheme.scheme == "CTNormalization":
        props = scheme.intensity_properties or {}
        np.clip(image, props["percentile_00_5"], props["percentile_99_5"], out=image)
        image -= props["mean"]
        image /= max(props["std"], eps)
    elif scheme.scheme == "RescaleTo01Normalization":
        image -= image.min()
        image /= np.clip(image.max(), a_min=eps, a_max=None)
    return image


def compute_new_shape(
    old_shape: tuple[int, ...], old_spacing: tuple[float, ...], new_spacing: tuple[float, ...]
) -> tuple[int, ...]:
    """nnU-Net's ``compute_new_shape``."""
    return tuple(round(i / j * k) for i, j, k in zip(old_spacing, new_spacing, old_shape))


def _separate_z(
    settings: Resampling, current: tuple[float, ...], new: tuple[float, ...]
) -> tuple[bool, int | None]:
    """nnU-Net's ``determine_do_sep_z_and_axis``."""

    def lowres(spacing: tuple[float, ...]) -> npt.NDArray[np.intp]:
        return np.where(max(spacing) / np.array(spacing) == 1)[0]

    def anisotropic(spacing: tuple[float, ...]) -> bool:
        return bool(np.max(spacing) / np.min(spacing) > settings.separate_z_anisotropy_threshold)

    axis: npt.NDArray[np.intp] | None
    if settings.force_separate_z is not None:
        separate = settings.force_separate_z
        axis = lowres(current) if separate else None
    elif anisotropic(current):
        separate, axis = True, lowres(current)
    elif anisotropic(new):
        separate, axis = True, lowres(new)
    else:
        separate, axis = False, None
    if axis is None or len(axis) != 1:
        return False, None
    return separate, int(axis[0])


def resample_to_shape(
    data: FloatArray,
    new_shape: tuple[int, ...],
    current_spacing: tuple[float, ...],
    new_spacing: tuple[float, ...],
    settings: Resampling,
) -> FloatArray:
    """nnU-Net's ``resample_data_or_seg_to_shape`` for images and logits (not segmentations)."""
    shape = np.array(data.shape[1:])
    target = np.array(new_shape)
    if np.all(shape == target):
        return data
    separate, axis = _separate_z(settings, current_spacing, new_spacing)
    out = np.zeros((data.shape[0], *new_shape), dtype=data.dtype)
    work = data.astype(float, copy=False)
    kwargs = {"mode": "edge", "anti_aliasing": False}
    if not separate or axis is None:
        for c in range(work.shape[0]):
            out[c] = resize(work[c], tuple(target), settings.order, **kwargs)
        return out
    in_plane = [a for a in range(3) if a != axis]
    shape_2d = tuple(target[in_plane])
    for c in range(work.shape[0]):
        tmp = target.copy()
        tmp[axis] = shape[axis]
        here = np.zeros(tuple(tmp))
        for s in range(shape[axis]):
            index: list[slice | int] = [slice(None)] * 3
            index[axis] = s
            here[tuple(index)] = resize(work[c][tuple(index)], shape_2d, settings.order, **kwargs)
        if shape[axis] != target[axis]:
            rows, cols, dims = (int(v) for v in target)
            orig = here.shape
            grid = np.mgrid[:rows, :cols, :dims].astype(float)
            for d, n in enumerate((rows, cols, dims)):
                grid[d] = float(orig[d]) / n * (grid[d] + 0.5) - 0.5
            out[c] = map_coordinates(here, grid, order=settings.order_z, mode="nearest")
        else:
            out[c] = here
    return out


def nnunet_preprocess(
    images: FloatArray, spacing: tuple[float, float, float], spec: ModelSpec
) -> NnunetCase:
    """``DefaultPreprocessor.run_case_npy`` for one study.

    Args:
        images: (channels, x, y, z) as read by nibabel.
        spacing: voxel size (mm) per (x, y, z) axis.
        spec: an imported nnU-Net model's spec (``preprocessing == "nnunet"``).
    """
    assert spec.channel_normalisation is not None and spec.resampling_data is not None
    axes = _forward_axes(spec)
    data = images.astype(np.float32).transpose([0, *(a + 1 for a in axes)])
    original_spacing = tuple(float(spacing[a]) for a in axes)
    shape_before = tuple(int(s) for s in data.shape[1:])
    mask = create_nonzero_mask(data)
    bbox = bbox_of(mask)
    slicer = tuple(slice(lo, hi) for lo, hi in bbox)
    data = data[(slice(None), *slicer)]
    mask = mask[slicer]
    shape_after = tuple(int(s) for s in data.shape[1:])
    target_spacing = tuple(float(s) for s in spec.target_spacing_mm)
    new_shape = compute_new_shape(shape_after, original_spacing, target_spacing)
    normalised = np.stack(
        [
            normalise_channel(data[c], mask, spec.channel_normalisation[c])
            for c in range(data.shape[0])
        ]
    )
    resampled = resample_to_shape(
        normalised, new_shape, original_spacing, target_spacing, spec.resampling_data
    )
    return NnunetCase(
        data=np.ascontiguousarray(resampled, dtype=np.float32),
        bbox=bbox,
        shape_before_cropping=shape_before,
        shape_after_cropping=shape_after,
        original_spacing=original_spacing,
    )


def sigmoid(logits: FloatArray) -> FloatArray:
    """Logistic function in float32."""
    result: FloatArray = (1.0 / (1.0 + np.exp(-logits.astype(np.float32)))).astype(np.float32)
    return result


def _softmax(logits: FloatArray) -> FloatArray:
    shifted: FloatArray = logits.astype(np.float32) - logits.max(axis=0, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=0, keepdims=True)
    return shifted


@dataclass(frozen=True)
class NnunetOutput:
    """Labels and probabilities on the study's (x, y, z) grid."""

    labels: npt.NDArray[np.uint8]
    probabilities: FloatArray
    """(outputs, x, y, z): softmax per label (background 1 outside the crop) or sigmoid per
    region (0 outside the crop), as nnU-Net's ``revert_cropping_on_probabilities``."""


def nnunet_export(logits: FloatArray, case: NnunetCase, spec: ModelSpec) -> NnunetOutput:
    """``convert_predicted_logits_to_segmentation_with_correct_shape`` back to (x, y, z).

    Args:
        logits: (outputs, *network grid) fold-averaged sliding-window logits.
        case: the preprocessing record.
        spec: the model's spec.
    """
    assert spec.resampling_probabilities is not None
    resampled = resample_to_shape(
        logits.astype(np.float32),
        case.shape_after_cropping,
        tuple(float(s) for s in spec.target_spacing_mm),
        case.original_spacing,
        spec.resampling_probabilities,
    )
    if spec.output_kind == "sigmoid_regions":
        assert spec.regions_class_order is not None
        probabilities = sigmoid(resampled)
        cropped_labels = np.zeros(resampled.shape[1:], dtype=np.uint8)
        for channel, label in enumerate(spec.regions_class_order):
            cropped_labels[probabilities[channel] > 0.5] = label
    else:
        probabilities = _softmax(resampled)
        lookup = np.asarray(spec.output_labels, dtype=np.uint8)
        cropped_labels = lookup[np.argmax(probabilities, axis=0)]
    slicer = tuple(slice(lo, hi) for lo, hi in case.bbox)
    labels = np.zeros(case.shape_before_cropping, dtype=np.uint8)
    labels[slicer] = cropped_labels
    full = np.zeros((probabilities.shape[0], *case.shape_before_cropping), dtype=np.float32)
    if spec.output_kind != "sigmoid_regions":
        full[0] = 1.0
    full[(slice(None), *slicer)] = probabilities
    # Network axes back to (x, y, z): undo the transpose, then the (z, y, x) reversal.
    inverse = list(np.argsort(_forward_axes(spec)))
    return NnunetOutput(
        labels=np.ascontiguousarray(labels.transpose(inverse)),
        probabilities=np.ascontiguousarray(full.transpose([0, *(a + 1 for a in inverse)])),
    )
