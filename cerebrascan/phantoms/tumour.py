"""Tumour geometry of the phantoms: nested, perturbed ellipsoidal sub-regions (pure maths).

All geometry is built on a local box around the tumour centre (1 mm isotropic voxels):

* the core (TC) is an ellipsoid with random semi-axes and orientation whose boundary is moved
  by a smooth random field (level set ``d + a * N < 0``, ``d`` an approximate signed
  distance to the ellipsoid in mm, ``N`` zero-mean over the ellipsoid);
* the necrotic centre lies deeper than a rim thickness (itself perturbed) below the core
  boundary; the rim is enhancing tumour (ET), the centre NETC, depending on the phenotype;
* the edema (SNFH) is the level set ``d + a * N < reach`` where the reach is the edema margin in
  white matter and a fraction of it in grey matter, perturbed (but never below half its
  nominal value), clipped to the brain and kept out of the ventricles; only parts connected
  to the core are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Tumour phenotypes and what they render.
#: ``necrotic``: NETC centre + ET rim; ``solid``: ET only; ``non_enhancing``: NETC only;
#: ``patchy``: NETC core with small enhancing patches on the rim.
PHENOTYPES: tuple[str, ...] = ("necrotic", "solid", "non_enhancing", "patchy")


@dataclass(frozen=True)
class TumourShape:
    """Drawn geometry of one tumour (lengths in mm, 1 mm voxels assumed).

    Attributes:
        phenotype: one of :data:`PHENOTYPES`.
        core_radius_mm: radius of the volume-equivalent sphere of the core ellipsoid.
        axis_scales: semi-axis multipliers (product 1) applied to ``core_radius_mm``.
        orientation: unit quaternion (w, x, y, z) rotating the ellipsoid axes.
        boundary_noise_mm: amplitude (std) of the core boundary perturbation.
        boundary_noise_scale_mm: correlation length of the boundary perturbation field.
        rim_thickness_mm: nominal enhancing-rim thickness (necrotic and patchy phenotypes).
        rim_noise_mm: amplitude (std) of the rim-thickness perturbation.
        patchy_et_fraction: fraction of the rim that enhances (patchy phenotype).
        edema_margin_mm: how far the edema reaches beyond the core in white matter.
        edema_gm_factor: fraction of the margin the edema reaches in grey matter / CSF.
        edema_noise_mm: amplitude (std) of the edema boundary perturbation.
    """

    phenotype: str
    core_radius_mm: float
    axis_scales: tuple[float, float, float]
    orientation: tuple[float, float, float, float]
    boundary_noise_mm: float
    boundary_noise_scale_mm: float
    rim_thickness_mm: float
    rim_noise_mm: float
    patchy_et_fraction: float
    edema_margin_mm: float
    edema_gm_factor: float
    edema_noise_mm: float

    def __post_init__(self) -> None:
        """Validate the drawn values."""
        if self.phenotype not in PHENOTYPES:
            raise ValueError(f"phenotype must be one of {PHENOTYPES}, got {self.phenotype!r}")
        if self.core_radius_mm <= 0:
            raise ValueError(f"core_radius_mm must be > 0, got {self.core_radius_mm}")
        if min(self.axis_scales) <= 0:
            raise ValueError(f"axis_scales must be > 0, got {self.axis_scales}")
        if not 0.0 <= self.patchy_et_fraction <= 1.0:
            raise ValueError(f"patchy_et_fraction must be in [0, 1], got {self.patchy_et_fraction}")
        if not 0.0 <= self.edema_gm_factor <= 1.0:
            raise ValueError(f"edema_gm_factor must be in [0, 1], got {self.edema_gm_factor}")
        for name in ("boundary_noise_mm", "rim_thickness_mm", "rim_noise_mm", "edema_margin_mm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def semi_axes_mm(self) -> np.ndarray:
        """Semi-axes of the core ellipsoid in mm."""
        return self.core_radius_mm * np.asarray(self.axis_scales, dtype=np.float64)

    def reach_mm(self) -> float:
        """Generous bound on how far (mm) from the centre any label can reach."""
        core = float(self.semi_axes_mm.max()) + 3.0 * self.boundary_noise_mm
        return core + self.edema_margin_mm + 3.0 * self.edema_noise_mm + 2.0


def quaternion_to_matrix(quaternion: tuple[float, float, float, float]) -> np.ndarray:
    """Rotation matrix of a (w, x, y, z) quaternion (normalised first).

    Raises:
        ValueError: for a zero quaternion.
    """
    q = np.asarray(quaternion, dtype=np.float64)
    norm = float(np.linalg.norm(q))
    if norm == 0.0:
        raise ValueError(f"quaternion must be non-zero, got {tuple(quaternion)}")
    w, x, y, z = q / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def smooth_random_field(
    rng: np.random.Generator, shape: tuple[int, ...], scale_mm: float, step: int | None = None
) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length ``scale_mm``.

    White noise on a coarse grid (``step`` voxels apart) is Gaussian-filtered and linearly
    upsampled, which is much cheaper than filtering at full resolution.

    Args:
        rng: random generator (consumed).
        shape: output shape (3D).
        scale_mm: Gaussian filter sigma in mm (1 mm voxels).
        step: coarse-grid spacing in voxels; default ``max(1, round(scale_mm / 3))``.

    Returns:
        float32 field of ``shape``.

    Raises:
        ValueError: on a non-positive scale or an empty shape.
    """
    if scale_mm <= 0:
        raise ValueError(f"scale_mm must be > 0, got {scale_mm}")
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be 3D and non-empty, got {shape}")
    step = max(1, round(scale_mm / 3.0)) if step is None else step
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    coarse_shape = tuple(int(np.ceil((n - 1) / step)) + 1 for n in shape)
    coarse = rng.standard_normal(coarse_shape, dtype=np.float32)
    coarse = ndimage.gaussian_filter(coarse, sigma=scale_mm / step, mode="wrap")
    if step > 1:
        zoom = [n / c for n, c in zip(shape, coarse_shape, strict=True)]
        field = ndimage.zoom(coarse, zoom, order=1, grid_mode=False)
        field = field[: shape[0], : shape[1], : shape[2]]
    else:
        field = coarse
    field = field - np.float32(field.mean())
    std = float(field.std())
    return np.asarray(field / np.float32(std if std > 0 else 1.0), dtype=np.float32)


def ellipsoid_signed_distance(
    shape: tuple[int, int, int],
    centre: np.ndarray,
    rotation: np.ndarray,
    semi_axes: np.ndarray,
) -> np.ndarray:
    """Approximate signed distance (mm, negative inside) to an ellipsoid on a voxel grid.

    Uses ``(rho - 1) * rho / |grad rho|`` with ``rho`` the ellipsoidal radius, exact along the
    principal axes and accurate near the surface.

    Args:
        shape: grid shape.
        centre: ellipsoid centre in voxel coordinates of the grid.
        rotation: 3x3 matrix whose columns are the ellipsoid axes.
        semi_axes: three semi-axes in mm.

    Returns:
        float32 array of ``shape``.
    """
    offsets = [
        (np.arange(n, dtype=np.float32) - np.float32(c)).reshape(
            [-1 if k == axis else 1 for k in range(3)]
        )
        for axis, (n, c) in enumerate(zip(shape, centre, strict=True))
    ]
    rho_sq = np.zeros(shape, dtype=np.float32)
    grad_sq = np.zeros(shape, dtype=np.float32)
    for k in range(3):
        q = (
            np.float32(rotation[0, k]) * offsets[0]
            + np.float32(rotation[1, k]) * offsets[1]
            + np.float32(rotation[2, k]) * offsets[2]
        )
        rho_sq += (q / np.float32(semi_axes[k])) ** 2
        grad_sq += (q / np.float32(semi_axes[k] ** 2)) ** 2
    rho = np.sqrt(rho_sq)
    grad = np.sqrt(grad_sq)
    tiny = np.float32(1e-6)
    distance = (rho - 1.0) * rho / np.maximum(grad, tiny)
    distance[rho < tiny] = -np.float32(np.min(semi_axes))
    return distance.astype(np.float32, copy=False)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return np.asarray(labels == int(np.argmax(sizes)))


def _components_touching(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(labels[seed & mask])] = True
    keep[0] = False
    return np.asarray(keep[labels])


def build_tumour_labels(
    shape: TumourShape,
    centre: np.ndarray,
    brain: np.ndarray,
    ventricles: np.ndarray,
    white_matter: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Render the BraTS labels (1 NETC, 2 SNFH, 3 ET) of one tumour on a local box.

    Args:
        shape: the drawn tumour geometry.
        centre: tumour centre in voxel coordinates of the box.
        brain: bool brain mask of the box; every label lies inside it.
        ventricles: bool ventricular CSF of the box; the edema does not enter it.
        white_matter: float white-matter membership of the box in [0, 1] (smoothed).
        rng: random generator for the perturbation fields (consumed).

    Returns:
        uint8 label array of the box shape.

    Raises:
        ValueError: if the masks do not share one 3D shape.
    """
    grid = brain.shape
    if len(grid) != 3 or ventricles.shape != grid or white_matter.shape != grid:
        raise ValueError(
            f"brain/ventricles/white_matter shapes differ: {grid}, {ventricles.shape}, "
            f"{white_matter.shape}"
        )
    rotation = quaternion_to_matrix(shape.orientation)
    distance = ellipsoid_signed_distance(grid, np.asarray(centre), rotation, shape.semi_axes_mm)
    scale = shape.boundary_noise_scale_mm
    boundary = smooth_random_field(rng, grid, scale)
    edema_field = smooth_random_field(rng, grid, scale)
    rim_field = smooth_random_field(rng, grid, max(2.0, 0.5 * scale))
    patch_field = smooth_random_field(rng, grid, 3.0)

    # centre the perturbation on the ellipsoid so it reshapes the core without shrinking it
    ellipsoid = distance < 0
    if ellipsoid.any():
        boundary -= np.float32(boundary[ellipsoid].mean())
    level = distance + np.float32(shape.boundary_noise_mm) * boundary
    core = _largest_component((level < 0) & brain)

    inner = core & (level < -(shape.rim_thickness_mm + np.float32(shape.rim_noise_mm) * rim_field))
    if shape.phenotype == "necrotic":
        netc, et = inner, core & ~inner
    elif shape.phenotype == "solid":
        netc, et = np.zeros_like(core), core
    elif shape.phenotype == "non_enhancing":
        netc, et = core, np.zeros_like(core)
    else:  # patchy
        rim = core & ~inner
        et = np.zeros_like(core)
        if rim.any() and shape.patchy_et_fraction > 0:
            threshold = np.quantile(patch_field[rim], 1.0 - shape.patchy_et_fraction)
            et = rim & (patch_field > threshold)
        netc = core & ~et

    labels = np.zeros(grid, dtype=np.uint8)
    if shape.edema_margin_mm > 0:
        g = np.float32(shape.edema_gm_factor)
        nominal = np.float32(shape.edema_margin_mm) * (g + (1.0 - g) * white_matter)
        reach = np.maximum(nominal + np.float32(shape.edema_noise_mm) * edema_field, 0.5 * nominal)
        whole = ((level < reach) & brain & ~ventricles) | core
        whole = _components_touching(whole, core)
        labels[whole] = 2
    labels[netc] = 1
    labels[et] = 3
    return labels


def plant_focus(
    labels: np.ndarray, radius_mm: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Turn a small ball deep in the enhancing tumour into a nodular focus (label ET).

    The centre is drawn among the ET voxels at least 60 % as deep (distance to the ET
    boundary) as the deepest one; the ball of ``radius_mm`` around it, limited to the tumour
    core, becomes ET.

    Args:
        labels: uint8 labels of a box (1 NETC, 2 SNFH, 3 ET); not modified.
        radius_mm: ball radius (1 mm voxels), > 0.
        rng: random generator (consumed only when there is ET).

    Returns:
        ``(labels, centre, ball)``: the new labels, the centre voxel of the box (None when the
        box holds no ET, labels then unchanged) and the bool focus mask (ball within the core).

    Raises:
        ValueError: for a non-positive radius.
    """
    if radius_mm <= 0:
        raise ValueError(f"radius_mm must be > 0, got {radius_mm}")
    et = labels == 3
    if not et.any():
        return labels, None, np.zeros(labels.shape, dtype=bool)
    depth = ndimage.distance_transform_edt(np.pad(et, 1))[1:-1, 1:-1, 1:-1]
    candidates = np.argwhere(depth >= 0.6 * float(depth.max()))
    centre = candidates[int(rng.integers(candidates.shape[0]))]
    offsets = [
        (np.arange(n) - int(c)).reshape([-1 if k == axis else 1 for k in range(3)])
        for axis, (n, c) in enumerate(zip(labels.shape, centre, strict=True))
    ]
    ball = offsets[0] ** 2 + offsets[1] ** 2 + offsets[2] ** 2 <= radius_mm**2
    ball &= (labels == 1) | et
    out = labels.copy()
    out[ball] = 3
    return out, centre, ball
