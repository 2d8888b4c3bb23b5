"""Load the SRI24 reference anatomy used as the phantoms' normal brain (I/O).

The T1 is the skull-stripped SRI24 template on the BraTS grid; structure masks are matched
to it by voxel index (their headers carry a different sign convention, the grids are equal).
The atlas ventricle mask is generous (it includes periventricular tissue); :class:`Anatomy`
keeps it as ``ventricle_region`` and derives ``ventricles`` as the CSF-dark voxels inside it.
:func:`load_anatomy` also keeps every SRI24 structure mask of
:data:`cerebrascan.atlas.files.SRI24_STRUCTURES`, clipped to the brain, as ``structures`` (the
generator warps them to compute ``truth["structure_distances_mm"]``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from scipy import ndimage

from cerebrascan.atlas.files import SRI24_STRUCTURES, load_sri24_structure_mask, load_sri24_t1
from cerebrascan.atlas.structures import CEREBRAL_STRUCTURES
from cerebrascan.imaging.geometry import spacing_from_affine
from cerebrascan.phantoms.contrasts import estimate_tissue_means

logger = logging.getLogger(__name__)


def supratentorial_mask(
    brain: np.ndarray, cerebral: np.ndarray, brainstem: np.ndarray, affine: np.ndarray
) -> np.ndarray:
    """Supratentorial brain: the brain minus brainstem and cerebellum (pure).

    The cerebellum is approximated as the brain outside the cerebral structure masks and
    inferior to the 95th percentile of the brainstem's superior coordinate; the largest
    connected component of cerebellum + brainstem is removed from the brain.

    Args:
        brain: bool brain mask.
        cerebral: bool union of cerebral lobe / deep grey matter masks.
        brainstem: bool brainstem mask.
        affine: 4x4 voxel-to-RAS affine (its third row gives the superior coordinate).

    Returns:
        bool supratentorial mask.

    Raises:
        ValueError: if the brainstem mask is empty.
    """
    stem = brainstem & brain
    if not stem.any():
        raise ValueError(
            f"brainstem mask is empty inside the brain ({int(brainstem.sum())} voxels)"
        )
    row = np.asarray(affine, dtype=np.float64)[2]
    axes = [np.arange(n, dtype=np.float64) for n in brain.shape]
    superior = (
        row[0] * axes[0][:, None, None]
        + row[1] * axes[1][None, :, None]
        + row[2] * axes[2][None, None, :]
        + row[3]
    )
    top = np.percentile(superior[stem], 95.0)
    infratentorial = (brain & ~cerebral & (superior <= top)) | stem
    labels, count = ndimage.label(infratentorial)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        infratentorial = labels == int(np.argmax(sizes))
    return np.asarray(brain & ~infratentorial)


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Reference anatomy on one voxel grid; arrays are read-only.

    Attributes:
        t1: float32 T1 intensities, 0 outside the brain.
        brain: bool brain mask (``t1 > 0``).
        ventricles: bool mask of ventricular CSF (dark voxels of ``ventricle_region``).
        ventricle_region: bool atlas ventricle mask as shipped (generous).
        supratentorial: bool supratentorial brain (no brainstem / cerebellum), used for
            tumour placement.
        affine: 4x4 float64 voxel-to-RAS affine of the grid.
        structures: read-only bool structure masks clipped to the brain, by name (may be
            empty, e.g. for an anatomy built from arrays in tests).
    """

    t1: np.ndarray
    brain: np.ndarray
    ventricles: np.ndarray
    ventricle_region: np.ndarray
    supratentorial: np.ndarray
    affine: np.ndarray
    structures: Mapping[str, np.ndarray] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape."""
        return (int(self.t1.shape[0]), int(self.t1.shape[1]), int(self.t1.shape[2]))

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel spacing in mm (column norms of the affine)."""
        return spacing_from_affine(self.affine)


def anatomy_from_arrays(
    t1: np.ndarray,
    ventricle_region: np.ndarray,
    supratentorial: np.ndarray,
    affine: np.ndarray,
    structures: Mapping[str, np.ndarray] | None = None,
) -> Anatomy:
    """Build an :class:`Anatomy` from in-memory arrays (pure; used by the loader and tests).

    Args:
        t1: 3D T1 volume (a trailing singleton axis is squeezed), 0 outside the brain.
        ventricle_region: 3D ventricle mask, nonzero inside.
        supratentorial: 3D mask of the placement region, nonzero inside.
        affine: 4x4 voxel-to-RAS affine.
        structures: optional named structure masks (nonzero inside), clipped to the brain.

    Returns:
        The read-only anatomy.

    Raises:
        ValueError: on mismatched shapes, a non-3D T1, a bad affine or an empty brain.
    """
    t1 = np.asarray(t1)
    if t1.ndim == 4 and t1.shape[-1] == 1:
        t1 = t1[..., 0]
    if t1.ndim != 3:
        raise ValueError(f"t1 must be 3D (or 3D with a trailing singleton), got shape {t1.shape}")
    t1 = np.ascontiguousarray(t1, dtype=np.float32)
    masks = {}
    for name, mask in (("ventricle_region", ventricle_region), ("supratentorial", supratentorial)):
        mask = np.asarray(mask)
        if mask.ndim == 4 and mask.shape[-1] == 1:
            mask = mask[..., 0]
        if mask.shape != t1.shape:
            raise ValueError(f"{name} shape {mask.shape} does not match t1 shape {t1.shape}")
        masks[name] = mask > 0.5
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
    brain = t1 > 0
    if brain.sum() < 1000:
        raise ValueError(f"brain has {int(brain.sum())} voxels (t1 > 0); expected a brain volume")
    m_csf, m_gm, _ = estimate_tissue_means(t1[brain])
    region = masks["ventricle_region"] & brain
    ventricles = region & (t1 < 0.5 * (m_csf + m_gm))
    supratentorial = masks["supratentorial"] & brain
    clipped: dict[str, np.ndarray] = {}
    for name, mask in (structures or {}).items():
        mask = np.asarray(mask)
        if mask.shape != t1.shape:
            raise ValueError(f"structure {name!r} shape {mask.shape} does not match t1 {t1.shape}")
        clipped[name] = (mask > 0.5) & brain
        clipped[name].flags.writeable = False
    arrays = (t1, brain, ventricles, region, supratentorial, affine)
    for array in arrays:
        array.flags.writeable = False
    return Anatomy(*arrays, structures=MappingProxyType(clipped))


@functools.lru_cache(maxsize=1)
def load_anatomy() -> Anatomy:
    """Load (once per process) the SRI24 T1 and structure masks as an :class:`Anatomy`.

    Returns:
        The cached, read-only anatomy on the BraTS grid (240 x 240 x 155, 1 mm).

    Raises:
        cerebrascan.atlas.files.AtlasNotInstalledError: if the atlas wheels are missing.
        ValueError: if a mask grid does not match the T1 grid.
    """
    t1, affine = load_sri24_t1()
    structures = {name: load_sri24_structure_mask(name) for name in SRI24_STRUCTURES}
    cerebral = np.zeros(t1.shape, dtype=bool)
    for name in CEREBRAL_STRUCTURES:
        cerebral |= load_sri24_structure_mask(name)
    supratentorial = supratentorial_mask(t1 > 0, cerebral, structures["brainstem"], affine)
    anatomy = anatomy_from_arrays(
        t1, structures["ventricles"], supratentorial, affine, structures=structures
    )
    logger.info(
        "loaded SRI24 anatomy: shape %s, %d brain voxels, %d ventricle CSF voxels",
        anatomy.shape,
        int(anatomy.brain.sum()),
        int(anatomy.ventricles.sum()),
    )
    return anatomy
