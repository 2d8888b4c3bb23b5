"""The display copy of an input contrast: uint8, windowed on the head's intensities.

Pure maths. Kept only when ``views.display_modalities`` names the contrast; the pipeline saves
it through :meth:`cerebrascan.store.artefacts.StudyArtefacts.save_display_image`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

WINDOW_PERCENTILES = (0.5, 99.5)
"""Head intensities below / above these percentiles become 0 / 255."""


def display_copy(image: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
    """``image`` windowed to uint8: the head's 0.5th..99.5th percentile mapped to 1..255.

    Voxels outside the head (``image <= 0``, BraTS skull-stripped background) stay 0, every head
    voxel is at least 1.
    """
    data = np.asarray(image, dtype=np.float32)
    head = data > 0
    if not head.any():
        return np.zeros(data.shape, dtype=np.uint8)
    low, high = np.percentile(data[head], WINDOW_PERCENTILES)
    scaled = (data - low) / max(float(high - low), 1e-6) * 254.0 + 1.0
    result: npt.NDArray[np.uint8] = np.clip(np.rint(scaled), 1, 255).astype(np.uint8)
    result[~head] = 0
    return result
