"""Voxel-grid geometry shared by every stage (maths only)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def spacing_from_affine(affine: npt.NDArray[Any]) -> tuple[float, float, float]:
    """Voxel size in mm along the array axes: the column norms of the affine's 3x3 part."""
    norms = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    return (float(norms[0]), float(norms[1]), float(norms[2]))
