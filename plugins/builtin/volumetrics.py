"""Built-in ``volumetrics`` analyzer: volumes, ratios, lesion count, position, size and shape.

Every length is measured in scanner space (the affine is applied), so anisotropic, rotated or
permuted grids give the same millimetres. Distances are between voxel centres, so a diameter is
at most about one voxel shorter than the continuous object's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import cdist

from cerebrascan.imaging.geometry import spacing_from_affine
from cerebrascan.imaging.regions import structure_mask, volumes_ml
from plugins.analyzer import AnalysisContext, Analyzer, Need
from plugins.builtin._support import bounding_box, segmentation_volumes
from plugins.hookspecs import hookimpl

logger = logging.getLogger(__name__)

try:  # import once at start-up rather than inside the first request (~0.2 s)
    import skimage.measure  # noqa: F401
except ImportError:
    logger.info("scikit-image not installed: surface area from exposed voxel faces")

SurfaceMethod = Literal["marching_cubes", "voxel_faces"]
RANO_MEASURABLE_MM = 10.0
"""RANO: a lesion is measurable when both perpendicular diameters are at least 10 mm."""
_DISTANCE_CHUNK = 512


class VolumetricsOptions(BaseModel):
    """Options of ``volumetrics`` (``options.analyzers.volumetrics``)."""

    model_config = ConfigDict(extra="forbid")

    midline_x_mm: float | None = Field(
        default=None,
        description="Scanner RAS x (mm) of the mid-sagittal plane. Default: the middle of the "
        "head's left-right extent in the images (BraTS grids have their origin at a corner, "
        "so RAS x = 0 is not the midline there).",
    )
    midline_tolerance_mm: float = Field(
        default=2.0, ge=0.0, description="Centroids this close to the midline are 'midline'."
    )


class StructureVolumes(BaseModel):
    """Volume (mL) of each BraTS label and region."""

    NETC: float = Field(description="Non-enhancing tumour core (label 1), mL.")
    SNFH: float = Field(description="Surrounding FLAIR hyperintensity / edema (label 2), mL.")
    ET: float = Field(description="Enhancing tumour (label 3), mL.")
    TC: float = Field(description="Tumour core = NETC + ET, mL.")
    WT: float = Field(description="Whole tumour = NETC + SNFH + ET, mL.")


class VolumeRatios(BaseModel):
    """Sub-region ratios; None when the denominator is empty."""

    et_tc: float | None = Field(description="ET / TC volume.")
    netc_tc: float | None = Field(description="NETC / TC volume.")
    snfh_wt: float | None = Field(description="SNFH / WT volume.")


class RanoMeasurement(BaseModel):
    """RANO-style bidimensional measurement of the enhancing tumour on one axial slice."""

    slice_axis: int = Field(description="Voxel axis closest to scanner S (0, 1 or 2).")
    slice_index: int = Field(description="Index along slice_axis of the slice with most ET.")
    et_area_mm2: float = Field(description="ET area on that slice, mm².")
    longest_diameter_mm: float = Field(description="Longest in-plane ET diameter, mm.")
    perpendicular_diameter_mm: float = Field(
        description="Longest ET extent perpendicular to the longest diameter, mm."
    )
    product_mm2: float = Field(description="Longest x perpendicular diameter, mm².")
    measurable: bool = Field(
        description=f"Both diameters are at least {RANO_MEASURABLE_MM:g} mm (RANO measurable)."
    )


class VolumetricsResult(BaseModel):
    """Volumes, ratios, lesion count, location, size and shape of the segmented tumour."""

    volumes_ml: StructureVolumes = Field(description="Per-label and per-region volumes.")
    ratios: VolumeRatios = Field(description="Sub-region volume ratios.")
    lesion_count: int = Field(description="Separate lesions: 26-connected components of WT.")
    centroid_voxel: tuple[float, float, float] | None = Field(
        description="WT centroid in voxel indices; None without tumour."
    )
    centroid_ras_mm: tuple[float, float, float] | None = Field(
        description="WT centroid in scanner RAS (mm); None without tumour."
    )
    hemisphere: Literal["left", "right", "midline"] | None = Field(
        description="Side of the WT centroid from its RAS x relative to options.midline_x_mm."
    )
    max_diameter_mm: float | None = Field(
        description="Largest distance between two WT voxel centres (on the convex hull), mm."
    )
    rano: RanoMeasurement | None = Field(description="Bidimensional ET product; None without ET.")
    surface_area_mm2: float | None = Field(description="WT surface area, mm²; None without tumour.")
    surface_method: SurfaceMethod = Field(
        description="marching_cubes (scikit-image) or voxel_faces (exposed voxel faces; "
        "overestimates curved surfaces by up to ~50%)."
    )
    sphericity: float | None = Field(
        description="π^(1/3)(6V)^(2/3)/A of WT (1 for a perfect sphere; about 0.9 for a "
        "voxelised sphere with marching cubes); None without tumour."
    )


class VolumetricsAnalyzer(Analyzer):
    """Tumour volumes (NETC, SNFH, ET, TC, WT), ratios, lesion count, centroid and hemisphere,
    maximum 3D diameter, RANO bidimensional product, surface area and sphericity.

    Needs only the segmentation; all lengths honour the voxel spacing and the affine.
    """

    name = "volumetrics"
    version = "1.0.0"
    result_model = VolumetricsResult
    options_model = VolumetricsOptions
    needs = frozenset({Need.SEGMENTATION, Need.IMAGES})
    timeout_s = 60.0

    def analyze(self, context: AnalysisContext) -> VolumetricsResult:
        """Measure the segmentation.

        Raises:
            ValueError: the segmentation is missing or not 3-D.
        """
        labels = context.segmentation
        if labels is None or labels.ndim != 3:
            shape = None if labels is None else labels.shape
            raise ValueError(f"volumetrics needs a 3-D segmentation, got shape {shape}")
        options = context.options_as(VolumetricsOptions)
        affine = np.asarray(context.affine, dtype=np.float64)
        midline = options.midline_x_mm
        if midline is None:
            midline = (
                head_midline_x_mm(context.images, affine) if context.images is not None else 0.0
            )
        return measure(
            labels,
            affine,
            context.spacing_mm,
            midline_x_mm=midline,
            midline_tolerance_mm=options.midline_tolerance_mm,
            volumes=segmentation_volumes(context),
        )


@hookimpl
def register_analyzers() -> list[Analyzer]:
    """The built-in volumetrics analyzer."""
    return [VolumetricsAnalyzer()]


def measure(
    labels: npt.NDArray[np.integer],
    affine: npt.NDArray[np.float64],
    spacing_mm: tuple[float, float, float],
    *,
    midline_x_mm: float = 0.0,
    midline_tolerance_mm: float = 2.0,
    volumes: Mapping[str, float] | None = None,
) -> VolumetricsResult:
    """Every volumetrics measurement of a BraTS label map.

    Args:
        labels: (x, y, z) BraTS labels (0 background, 1 NETC, 2 SNFH, 3 ET).
        affine: 4x4 voxel-to-RAS (mm).
        spacing_mm: voxel size along the array axes.
        midline_x_mm: RAS x of the mid-sagittal plane.
        midline_tolerance_mm: half-width of the 'midline' band.
        volumes: the label map's volumes (mL) per label and region, when already measured
            (the pipeline's); measured here when None.
    """
    volumes = dict(volumes) if volumes is not None else volumes_ml(labels, spacing_mm)
    box = bounding_box(labels > 0)
    if box is None:
        return VolumetricsResult(
            volumes_ml=StructureVolumes(**volumes),
            ratios=_ratios(volumes),
            lesion_count=0,
            centroid_voxel=None,
            centroid_ras_mm=None,
            hemisphere=None,
            max_diameter_mm=None,
            rano=None,
            surface_area_mm2=None,
            surface_method=surface_method_available(),
            sphericity=None,
        )
    crop = np.asarray(labels[box])
    offset = np.array([s.start for s in box], dtype=np.float64)
    whole = crop > 0
    centroid = np.array(ndimage.center_of_mass(whole), dtype=np.float64) + offset
    centroid_ras = voxel_to_ras(affine, centroid[None])[0]
    area, method = surface_area_mm2(whole, spacing_mm)
    wt_mm3 = volumes["WT"] * 1000.0
    et = structure_mask(crop, "ET")
    return VolumetricsResult(
        volumes_ml=StructureVolumes(**volumes),
        ratios=_ratios(volumes),
        lesion_count=count_lesions(whole),
        centroid_voxel=_triple(centroid),
        centroid_ras_mm=_triple(centroid_ras),
        hemisphere=hemisphere(float(centroid_ras[0]), midline_x_mm, midline_tolerance_mm),
        max_diameter_mm=max_diameter_mm(whole, affine, offset),
        rano=rano_measurement(et, affine, offset) if et.any() else None,
        surface_area_mm2=area,
        surface_method=method,
        sphericity=sphericity(wt_mm3, area),
    )


def head_midline_x_mm(images: npt.NDArray[np.floating], affine: npt.NDArray[np.float64]) -> float:
    """RAS x (mm) halfway between the head's leftmost and rightmost voxels (any modality > 0)."""
    head = np.any(np.asarray(images) != 0, axis=0)
    if not head.any():
        return 0.0
    corners = np.array(
        [[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.float64
    )
    box = bounding_box(head)
    assert box is not None
    lo = np.array([s.start for s in box], dtype=np.float64)
    hi = np.array([s.stop - 1 for s in box], dtype=np.float64)
    ras_x = voxel_to_ras(affine, lo + corners * (hi - lo))[:, 0]
    return float((ras_x.min() + ras_x.max()) / 2.0)


def _triple(values: npt.NDArray[np.float64]) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def _ratios(volumes: dict[str, float]) -> VolumeRatios:
    return VolumeRatios(
        et_tc=_ratio(volumes["ET"], volumes["TC"]),
        netc_tc=_ratio(volumes["NETC"], volumes["TC"]),
        snfh_wt=_ratio(volumes["SNFH"], volumes["WT"]),
    )


def voxel_to_ras(
    affine: npt.NDArray[np.float64], points: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    """Map (n, 3) voxel coordinates to scanner RAS mm with a 4x4 affine."""
    points = np.asarray(points, dtype=np.float64)
    result: npt.NDArray[np.float64] = points @ affine[:3, :3].T + affine[:3, 3]
    return result


def count_lesions(mask: npt.NDArray[np.bool_]) -> int:
    """Number of 26-connected components of a 3-D mask."""
    _, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    return int(count)


def hemisphere(
    x_mm: float, midline_x_mm: float = 0.0, tolerance_mm: float = 2.0
) -> Literal["left", "right", "midline"]:
    """Side of a RAS x coordinate: + is the patient's right, - the left.

    Raises:
        ValueError: ``tolerance_mm`` is negative.
    """
    if tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be >= 0, got {tolerance_mm}")
    if x_mm > midline_x_mm + tolerance_mm:
        return "right"
    if x_mm < midline_x_mm - tolerance_mm:
        return "left"
    return "midline"


def max_pairwise_distance(points: npt.NDArray[np.float64]) -> tuple[float, int, int]:
    """Largest Euclidean distance between rows of ``points`` and the indices of the pair.

    Computed in chunks, so memory stays at ``chunk x n`` distances.

    Raises:
        ValueError: ``points`` is empty.
    """
    if len(points) == 0:
        raise ValueError("max_pairwise_distance needs at least one point, got none")
    best, best_i, best_j = 0.0, 0, 0
    for start in range(0, len(points), _DISTANCE_CHUNK):
        block = points[start : start + _DISTANCE_CHUNK]
        squared = cdist(block, points, "sqeuclidean")
        flat = int(np.argmax(squared))
        i, j = divmod(flat, len(points))
        if squared[i, j] > best:
            best, best_i, best_j = float(squared[i, j]), start + i, j
    return math.sqrt(best), best_i, best_j


def hull_vertices(points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The convex-hull vertices of (n, d) points (all points if the hull is degenerate)."""
    if len(points) <= points.shape[1] + 1:
        return points
    vertices: npt.NDArray[np.intp]
    try:
        vertices = ConvexHull(points).vertices
    except QhullError:
        try:
            # flat or collinear sets: joggled input still yields valid vertex indices
            vertices = ConvexHull(points, qhull_options="QJ").vertices
        except QhullError:
            return points
    return points[vertices]


def max_diameter_mm(
    mask: npt.NDArray[np.bool_],
    affine: npt.NDArray[np.float64],
    offset: npt.NDArray[np.float64] | None = None,
) -> float:
    """Maximum 3-D diameter: the largest distance between surface-voxel centres, in mm.

    Surface voxels are mapped through the affine, their convex hull taken and the largest
    distance between hull vertices returned (0 for a single voxel).

    Args:
        mask: 3-D mask (may be a crop of the grid).
        affine: the full grid's voxel-to-RAS affine.
        offset: voxel index of ``mask[0, 0, 0]`` in the full grid.
    """
    surface = mask & ~ndimage.binary_erosion(mask, border_value=0)
    indices = np.argwhere(surface).astype(np.float64)
    if offset is not None:
        indices += offset
    if len(indices) == 0:
        return 0.0
    points = voxel_to_ras(affine, indices)
    distance, _, _ = max_pairwise_distance(hull_vertices(points))
    return distance


def axial_axis(affine: npt.NDArray[np.float64]) -> int:
    """The voxel axis whose direction is closest to scanner S (superior)."""
    cosines = np.abs(affine[2, :3]) / np.asarray(spacing_from_affine(affine))
    return int(np.argmax(cosines))


def rano_measurement(
    et: npt.NDArray[np.bool_],
    affine: npt.NDArray[np.float64],
    offset: npt.NDArray[np.float64] | None = None,
) -> RanoMeasurement | None:
    """RANO bidimensional product of the enhancing tumour.

    On the axial slice (along :func:`axial_axis`) with the largest ET area: the longest
    in-plane diameter between ET voxel centres, and the longest extent perpendicular to it (the
    largest spread, across the lesion, of voxel centres lying on a line perpendicular to the
    longest diameter; the lesion's cavity counts as inside, as in RANO practice).

    Args:
        et: 3-D enhancing-tumour mask (may be a crop of the grid).
        affine: the full grid's voxel-to-RAS affine.
        offset: voxel index of ``et[0, 0, 0]`` in the full grid.

    Returns:
        None if there is no ET.
    """
    if not et.any():
        return None
    offset = np.zeros(3) if offset is None else np.asarray(offset, dtype=np.float64)
    axis = axial_axis(affine)
    in_plane = [a for a in range(3) if a != axis]
    columns = affine[:3, :3]
    pixel_area = float(np.linalg.norm(np.cross(columns[:, in_plane[0]], columns[:, in_plane[1]])))
    per_slice = et.sum(axis=tuple(in_plane))
    local = int(np.argmax(per_slice))
    index = [slice(None)] * 3
    index[axis] = slice(local, local + 1)
    voxels = np.argwhere(et[tuple(index)]).astype(np.float64)
    voxels[:, axis] = local
    voxels += offset
    points3 = voxel_to_ras(affine, voxels)
    u = columns[:, in_plane[0]] / np.linalg.norm(columns[:, in_plane[0]])
    v = columns[:, in_plane[1]] - (columns[:, in_plane[1]] @ u) * u
    v /= np.linalg.norm(v)
    points = np.stack([points3 @ u, points3 @ v], axis=1)
    hull = hull_vertices(points)
    longest, i, j = max_pairwise_distance(hull)
    perpendicular = 0.0
    if longest > 0:
        direction = (hull[j] - hull[i]) / longest
        normal = np.array([-direction[1], direction[0]])
        along = points @ direction
        across = points @ normal
        spacing = spacing_from_affine(affine)
        pixel = min(spacing[a] for a in in_plane)
        bins = np.floor((along - along.min()) / pixel).astype(np.int64)
        order = np.argsort(bins, kind="stable")
        edges = np.flatnonzero(np.diff(bins[order])) + 1
        sorted_across = across[order]
        starts = np.concatenate([[0], edges])
        highs = np.maximum.reduceat(sorted_across, starts)
        lows = np.minimum.reduceat(sorted_across, starts)
        perpendicular = float((highs - lows).max())
    return RanoMeasurement(
        slice_axis=axis,
        slice_index=int(local + offset[axis]),
        et_area_mm2=float(per_slice[local]) * pixel_area,
        longest_diameter_mm=longest,
        perpendicular_diameter_mm=perpendicular,
        product_mm2=longest * perpendicular,
        measurable=min(longest, perpendicular) >= RANO_MEASURABLE_MM,
    )


def surface_method_available() -> SurfaceMethod:
    """``marching_cubes`` when scikit-image is importable, else ``voxel_faces``."""
    try:
        import skimage.measure  # noqa: F401
    except ImportError:
        return "voxel_faces"
    return "marching_cubes"


def surface_area_mm2(
    mask: npt.NDArray[np.bool_],
    spacing_mm: tuple[float, float, float],
    method: SurfaceMethod | None = None,
) -> tuple[float, SurfaceMethod]:
    """Surface area of a 3-D mask in mm² and the method used.

    ``marching_cubes`` (scikit-image; the default when installed) meshes the mask at level 0.5;
    ``voxel_faces`` counts exposed voxel faces x face area (exact for boxes, about 1.5x the
    true area for spheres). Both use the voxel spacing; a sheared affine is not accounted for.

    Raises:
        ValueError: an unknown ``method``.
    """
    method = method or surface_method_available()
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    if not padded.any():
        return 0.0, method
    if method == "marching_cubes":
        from skimage.measure import marching_cubes, mesh_surface_area

        vertices, faces, _, _ = marching_cubes(
            padded.astype(np.float32), level=0.5, spacing=tuple(float(s) for s in spacing_mm)
        )
        return float(mesh_surface_area(vertices, faces)), method
    if method == "voxel_faces":
        area = 0.0
        for axis in range(3):
            face = math.prod(spacing_mm[a] for a in range(3) if a != axis)
            exposed = np.count_nonzero(np.diff(padded, axis=axis))
            area += exposed * face
        return area, method
    raise ValueError(f"unknown surface method {method!r}; choose marching_cubes or voxel_faces")


def sphericity(volume_mm3: float, area_mm2: float) -> float | None:
    """π^(1/3) (6V)^(2/3) / A: 1 for a sphere, less for any other shape; None if A is 0."""
    if area_mm2 <= 0:
        return None
    return float(math.pi ** (1 / 3) * (6 * volume_mm3) ** (2 / 3) / area_mm2)
