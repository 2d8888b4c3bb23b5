"""SRI24 structure masks on a study grid and distances to them in mm (maths only).

A :class:`StructureAtlas` holds every structure of
:data:`cerebrascan.atlas.files.SRI24_STRUCTURES` packed as the bits of one ``uint16`` volume
(:func:`pack_structure_masks`) and answers distance queries with k-d trees built on the
structures' surface voxels (:func:`surface_voxels`).
:func:`cerebrascan.atlas.mapping.structure_atlas_for` builds one for a study.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

from cerebrascan.atlas.files import SRI24_STRUCTURES

if TYPE_CHECKING:  # the registration module pulls SimpleITK; the type is all this needs
    from cerebrascan.atlas.registration import RegistrationOutcome

CEREBRAL_STRUCTURES: tuple[str, ...] = (
    "frontal_lobe",
    "parietal",
    "occipital",
    "temporal",
    "insula",
    "thalamus",
)
"""The SRI24 cerebral lobe and deep grey matter masks. Brain outside them and inferior to the top
of the brainstem is taken as infratentorial (cerebellum), together with the brainstem."""


def pack_structure_masks(
    masks: Mapping[str, npt.NDArray[np.bool_]], shape: tuple[int, ...]
) -> npt.NDArray[np.uint16]:
    """Structure masks as the bits of one volume.

    Args:
        masks: structure name -> bool mask of ``shape``, for every name of
            :data:`cerebrascan.atlas.files.SRI24_STRUCTURES` (bit ``k`` is the ``k``-th name).
        shape: the grid's shape.

    Returns:
        ``uint16`` volume of ``shape``.

    Raises:
        KeyError: a structure of :data:`~cerebrascan.atlas.files.SRI24_STRUCTURES` is missing.
    """
    packed = np.zeros(shape, dtype=np.uint16)
    for bit, name in enumerate(SRI24_STRUCTURES):
        if name not in masks:
            raise KeyError(f"structure mask {name!r} missing; got {sorted(masks)}")
        packed[masks[name]] |= np.uint16(1 << bit)
    return packed


def clip_to_brain(packed: npt.NDArray[np.uint16], t1: npt.NDArray[Any]) -> npt.NDArray[np.uint16]:
    """Clear, in place, every structure bit outside the brain (voxels with ``t1 <= 0``).

    Returns:
        ``packed`` itself.
    """
    packed[np.asarray(t1) <= 0] = 0
    return packed


def surface_voxels(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.intp]:
    """Voxel indices ``(N, 3)`` of a mask's voxels with a 6-neighbour outside the mask.

    The closest pair of voxels of two disjoint masks is always a pair of such surface voxels
    (on axis-aligned grids), so distances between masks only need these.
    """
    if not mask.any():
        return np.zeros((0, 3), dtype=np.intp)
    nz = [np.flatnonzero(mask.any(axis=tuple(k for k in range(3) if k != a))) for a in range(3)]
    lo = [int(n[0]) for n in nz]
    hi = [int(n[-1]) + 1 for n in nz]
    crop = np.pad(mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], 1)
    inner = crop[1:-1, 1:-1, 1:-1]
    interior = (
        inner
        & crop[:-2, 1:-1, 1:-1]
        & crop[2:, 1:-1, 1:-1]
        & crop[1:-1, :-2, 1:-1]
        & crop[1:-1, 2:, 1:-1]
        & crop[1:-1, 1:-1, :-2]
        & crop[1:-1, 1:-1, 2:]
    )
    found: npt.NDArray[np.intp] = np.argwhere(inner & ~interior) + np.asarray(lo, dtype=np.intp)
    return found


_BOUND_SAMPLE = 256
"""Voxels whose nearest distance bounds :meth:`StructureAtlas.min_distance`'s search."""


class StructureAtlas:
    """All SRI24 structure masks on one study grid, with mm distance queries.

    The masks are stored packed (bit ``k`` of a ``uint16`` volume is structure ``k`` of
    :data:`cerebrascan.atlas.files.SRI24_STRUCTURES`) and unpacked on first use. Distances are
    between voxel centres, in mm through the study affine's 3x3 part (the translation does not
    change distances).

    Attributes:
        names: structure names, in bit order.
        registration: the registration that produced the masks, or None (voxel-index match).
    """

    names: tuple[str, ...] = SRI24_STRUCTURES

    def __init__(
        self,
        packed: npt.NDArray[np.uint16],
        linear: npt.NDArray[np.float64],
        registration: RegistrationOutcome | None,
    ) -> None:
        packed.flags.writeable = False
        self.packed = packed
        self.registration = registration
        self._linear = np.asarray(linear, dtype=np.float64)
        self._masks: dict[str, npt.NDArray[np.bool_]] = {}
        self._trees: dict[str, cKDTree | None] = {}
        self._lock = threading.Lock()

    @property
    def shape(self) -> tuple[int, ...]:
        """Grid shape of the masks."""
        return tuple(self.packed.shape)

    def _check(self, name: str) -> int:
        if name not in self.names:
            raise KeyError(f"unknown structure {name!r}; choose from {list(self.names)}")
        return self.names.index(name)

    def mask(self, name: str) -> npt.NDArray[np.bool_]:
        """Read-only bool mask of one structure on the study grid.

        Raises:
            KeyError: ``name`` is not a structure of :attr:`names`.
        """
        bit = self._check(name)
        with self._lock:
            if name not in self._masks:
                mask = ((self.packed >> np.uint16(bit)) & np.uint16(1)).astype(bool)
                mask.flags.writeable = False
                self._masks[name] = mask
            return self._masks[name]

    def to_mm(self, voxels: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """Voxel indices ``(N, 3)`` to mm coordinates (study affine without translation)."""
        return np.asarray(voxels, dtype=np.float64) @ self._linear.T

    def tree(self, name: str) -> cKDTree | None:
        """k-d tree of the structure's surface voxels in mm (None for an empty structure)."""
        mask = self.mask(name)
        with self._lock:
            if name not in self._trees:
                surface = surface_voxels(mask)
                self._trees[name] = cKDTree(self.to_mm(surface)) if len(surface) else None
            return self._trees[name]

    def distances(
        self,
        name: str,
        voxels: npt.NDArray[Any],
        upper_bound_mm: float = np.inf,
    ) -> npt.NDArray[np.float64]:
        """Distance (mm) from each voxel ``(N, 3)`` to the structure; 0 inside it.

        Voxels farther than ``upper_bound_mm`` get ``inf`` (much faster for small bounds);
        every voxel gets ``inf`` when the structure is empty on this grid.
        """
        voxels = np.asarray(voxels)
        tree = self.tree(name)
        if tree is None or len(voxels) == 0:
            return np.full(len(voxels), np.inf)
        found, _ = tree.query(self.to_mm(voxels), distance_upper_bound=upper_bound_mm)
        inside = self.mask(name)[voxels[:, 0], voxels[:, 1], voxels[:, 2]]
        return np.where(inside, 0.0, np.asarray(found, dtype=np.float64))

    def min_distance(self, name: str, voxels: npt.NDArray[Any]) -> float:
        """``distances(name, voxels).min()``, the same value, found faster: the nearest of an
        evenly spaced sample of the voxels bounds the search of all of them (a k-d tree query
        with a small ``distance_upper_bound`` prunes most of the tree).

        Returns:
            The smallest distance (mm); 0 if a voxel is inside the structure; ``inf`` for no
            voxels or an empty structure.
        """
        voxels = np.asarray(voxels)
        tree = self.tree(name)
        if tree is None or len(voxels) == 0:
            return float("inf")
        if self.mask(name)[voxels[:, 0], voxels[:, 1], voxels[:, 2]].any():
            return 0.0
        points = self.to_mm(voxels)
        sample, _ = tree.query(points[:: max(1, len(points) // _BOUND_SAMPLE)])
        # slightly above the sample's nearest: the query keeps distances under the bound only
        bound = float(np.min(sample)) * (1.0 + 1e-9) + 1e-9
        found, _ = tree.query(points, distance_upper_bound=bound)
        return float(np.min(found))
