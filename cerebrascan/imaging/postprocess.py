"""Inverse of preprocessing: network probabilities back to labels on the input grid."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from cerebrascan.imaging.preprocess import PreprocessedCase, resample_channels


def probabilities_to_input_grid(
    probabilities: npt.NDArray[np.float32], case: PreprocessedCase
) -> npt.NDArray[np.float32]:
    """Resample class probabilities to the cropped input grid (linear, as nnU-Net does).

    Returns:
        (classes, *case.cropped_shape) float32.
    """
    return resample_channels(probabilities, case.cropped_shape, order=1)


def labels_on_input_grid(
    cropped_probabilities: npt.NDArray[np.float32],
    case: PreprocessedCase,
    output_labels: list[int],
) -> npt.NDArray[np.uint8]:
    """Argmax into label values, pasted into a background volume of the input shape.

    Args:
        cropped_probabilities: (classes, *cropped_shape) probabilities.
        case: the preprocessing record (crop box and input shape).
        output_labels: label value of each probability channel (channel 0 is background).
    """
    if cropped_probabilities.shape[0] != len(output_labels):
        raise ValueError(
            f"{cropped_probabilities.shape[0]} probability channels but "
            f"{len(output_labels)} output labels {output_labels}"
        )
    lookup = np.asarray(output_labels, dtype=np.uint8)
    labels = np.zeros(case.input_shape, dtype=np.uint8)
    labels[case.crop_box] = lookup[np.argmax(cropped_probabilities, axis=0)]
    return labels


def probabilities_on_input_grid(
    cropped_probabilities: npt.NDArray[np.float32],
    case: PreprocessedCase,
    output_labels: list[int],
) -> npt.NDArray[np.float16]:
    """Probabilities pasted into the input grid, one channel per label value, as float16.

    Outside the crop the background channel is 1 and every other channel 0.

    Args:
        cropped_probabilities: (classes, *cropped_shape) probabilities.
        case: the preprocessing record (crop box and input shape).
        output_labels: label value of each probability channel; must be a permutation of
            ``0 .. classes - 1`` so channel ``c`` of the result is label ``c``.

    Raises:
        ValueError: ``output_labels`` is not such a permutation.
    """
    classes = cropped_probabilities.shape[0]
    if sorted(output_labels) != list(range(classes)):
        raise ValueError(
            f"output_labels {output_labels} are not a permutation of 0..{classes - 1}; "
            "cannot lay probabilities out by label value"
        )
    full = np.zeros((classes, *case.input_shape), dtype=np.float16)
    full[0] = 1.0
    for channel, label in enumerate(output_labels):
        full[(label, *case.crop_box)] = cropped_probabilities[channel]
    return full


def scalar_map_on_input_grid(
    network_map: npt.NDArray[np.float32], case: PreprocessedCase
) -> npt.NDArray[np.float16]:
    """A per-voxel map on the network grid, resampled (linear) into the input grid as float16.

    Zero outside the crop.
    """
    cropped = resample_channels(network_map[None], case.cropped_shape, order=1)[0]
    full = np.zeros(case.input_shape, dtype=np.float16)
    full[case.crop_box] = cropped
    return full
