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
