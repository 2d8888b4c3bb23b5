"""Phantoms and an in-memory analysis context for the nogo / hotspot / quality analyzer tests.

Cases are generated once per test session (``lru_cache``) and shared by the three test
modules: an unwarped case (the atlas anatomy as is, so no registration is needed), the same
tumour in a randomly warped anatomy (rotation up to 8 degrees, per-axis scale, translation up
to 6 mm; no mass effect, which an affine registration cannot undo), and that warped case
resampled to another grid (1.2 x 1.2 x 1.5 mm, x axis reversed, shifted origin).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from cerebrascan.phantoms import PhantomCase, PhantomParams, WarpedAnatomy
from cerebrascan.phantoms.contrasts import MODALITIES
from cerebrascan.phantoms.generator import generate_case_with_anatomy
from plugins.analyzer import AnalysisContext, Analyzer
from plugins.testing import validated_options

SEED = 3
#: Atlas voxel of the tumour centre: deep white matter ~18 mm from the (generous) ventricle
#: mask and ~28 mm from the brainstem, so distances are small but non-zero.
CENTRE = (158, 113, 79)
TRUTH_STRUCTURES = ("brainstem", "ventricles", "thalamus", "internal_capsule")
_COMMON: dict[str, Any] = {
    "phenotype_probs": (1.0, 0.0, 0.0, 0.0),
    "tumour_centre_atlas_voxel": CENTRE,
    "wt_volume_ml": (15.0, 15.0),
    "focus": True,
    "truth_structures": TRUTH_STRUCTURES,
}
UNWARPED = PhantomParams(random_warp=False, **_COMMON)
WARPED = PhantomParams(
    random_warp=True,
    mass_effect_mm=(0.0, 0.0),
    rotation_max_deg=8.0,
    translation_max_mm=6.0,
    **_COMMON,
)


@functools.lru_cache(maxsize=2)
def phantom(warped: bool) -> tuple[PhantomCase, WarpedAnatomy]:
    """The shared unwarped or warped case (read-only arrays)."""
    case, anatomy = generate_case_with_anatomy(
        SEED, f"ANALYZER-{'W' if warped else 'U'}", WARPED if warped else UNWARPED
    )
    for array in (*case.images.values(), case.segmentation):
        array.flags.writeable = False
    return case, anatomy


#: Grid of :func:`resampled_warped`: 1.2 x 1.2 x 1.5 mm, +x to the right (the atlas has -x).
OFF_GRID_SHAPE = (190, 200, 100)
OFF_GRID_AFFINE = np.array(
    [[1.2, 0.0, 0.0, -235.0], [0.0, 1.2, 0.0, -10.0], [0.0, 0.0, 1.5, 5.0], [0.0, 0.0, 0.0, 1.0]]
)


@functools.lru_cache(maxsize=1)
def resampled_warped() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """The warped case on :data:`OFF_GRID_AFFINE`: ``(images (4, x, y, z), segmentation)``."""
    case, _ = phantom(True)
    to_source = np.linalg.inv(case.affine) @ OFF_GRID_AFFINE
    grid = np.indices(OFF_GRID_SHAPE, dtype=np.float32).reshape(3, -1)
    source = (to_source[:3, :3] @ grid + to_source[:3, 3:4]).astype(np.float32)
    images = np.stack(
        [
            ndimage.map_coordinates(case.images[m], source, order=1).reshape(OFF_GRID_SHAPE)
            for m in MODALITIES
        ]
    ).astype(np.float32)
    segmentation = ndimage.map_coordinates(case.segmentation, source, order=0)
    return images, segmentation.reshape(OFF_GRID_SHAPE).astype(np.uint8)


def stack_images(images: dict[str, npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
    """``(4, x, y, z)`` in BraTS modality order."""
    return np.stack([images[m] for m in MODALITIES]).astype(np.float32, copy=False)


def probabilities_from_labels(
    segmentation: npt.NDArray[np.uint8], sigma_mm: float = 1.0
) -> npt.NDArray[np.float16]:
    """Smoothed one-hot class probabilities ``(4, x, y, z)`` float16 (model-free stand-in)."""
    probabilities = np.zeros((4, *segmentation.shape), dtype=np.float16)
    probabilities[0] = 1.0
    tumour = segmentation > 0
    if not tumour.any():
        return probabilities
    idx = np.argwhere(tumour)
    lo = np.maximum(idx.min(axis=0) - 6, 0)
    hi = np.minimum(idx.max(axis=0) + 7, segmentation.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    local = segmentation[box]
    soft = np.stack(
        [ndimage.gaussian_filter((local == k).astype(np.float32), sigma_mm) for k in range(4)]
    )
    soft /= soft.sum(axis=0, keepdims=True)
    probabilities[(slice(None), *box)] = soft.astype(np.float16)
    return probabilities


@dataclass
class RecordingSink:
    """In-memory :class:`plugins.analyzer.ArtefactSink` that keeps what was written."""

    arrays: dict[str, npt.NDArray[Any]] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)

    def write_nifti(self, name: str, array: npt.NDArray[Any], *, description: str) -> str:
        if name in self.arrays:
            raise ValueError(f"artefact {name!r} was already written")
        self.arrays[name] = np.array(array)
        self.descriptions[name] = description
        return f"/studies/test/artefacts/{name}"


def make_context(
    case: PhantomCase,
    *,
    images: npt.NDArray[np.float32] | None = None,
    segmentation: npt.NDArray[np.uint8] | None = None,
    probabilities: npt.NDArray[np.float16] | None = None,
    tta_disagreement: npt.NDArray[np.float16] | None = None,
    options: dict[str, Any] | None = None,
    sink: RecordingSink | None = None,
    affine: npt.NDArray[np.float64] | None = None,
    analyzer: Analyzer | None = None,
) -> AnalysisContext:
    """An analysis context for ``case`` (images, segmentation, affine default to the case's).

    ``options`` are validated against ``analyzer``'s ``options_model`` as the host does (a
    ``ValueError`` naming the analyzer when refused); without ``analyzer`` they are passed as
    given.
    """
    affine = np.asarray(case.affine if affine is None else affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return AnalysisContext(
        study_id=case.case_id,
        affine=affine,
        spacing_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        modalities=MODALITIES,
        artefacts=sink if sink is not None else RecordingSink(),
        images=stack_images(case.images) if images is None else images,
        segmentation=case.segmentation if segmentation is None else segmentation,
        probabilities=probabilities,
        tta_disagreement=tta_disagreement,
        options=validated_options(analyzer, options) if analyzer is not None else options or {},
    )
