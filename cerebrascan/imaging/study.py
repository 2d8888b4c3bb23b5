"""The in-memory form of one multi-modal MRI study."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Volume:
    """One decoded 3D image: voxels (float32) and its voxel-to-RAS affine."""

    data: npt.NDArray[np.float32]
    affine: npt.NDArray[np.float64]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the array axes."""
        norms = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        return (float(norms[0]), float(norms[1]), float(norms[2]))


@dataclass(frozen=True)
class Study:
    """Four co-registered modalities stacked channel-first in ``modalities`` order."""

    images: npt.NDArray[np.float32]
    affine: npt.NDArray[np.float64]
    modalities: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape shared by all modalities."""
        x, y, z = self.images.shape[1:]
        return (int(x), int(y), int(z))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the array axes."""
        return Volume(self.images[0], self.affine).spacing
