"""Map SRI24 structure masks onto a study's grid, registering the atlas only when needed.

Maths only (the atlas files are read by :mod:`cerebrascan.atlas`). Three steps:

1. :func:`assess_alignment` decides whether the study already lies on the SRI24 grid with the
   SRI24 anatomy: same shape and voxel size as the atlas T1 (matched by voxel index, as
   BraTS data are), *and* the anatomy agrees: normalised cross-correlation (NCC) of atlas T1
   and study ``t1n`` inside the union of both brains, and Dice of the two brain masks
   (nonzero voxels), both above thresholds.
2. Otherwise :func:`register_atlas_to_image` registers the atlas T1 (moving) to the study
   ``t1n`` (fixed) with SimpleITK: centred moments initialisation, rigid (Euler) then affine,
   Mattes mutual information, three resolution levels, random sampling with a fixed seed.
   ITK's metric sums per-thread histograms, so only a single thread (the default) gives
   bit-identical transforms run after run; more threads are faster but differ in the ~6th
   significant digit.
3. :func:`structure_atlas_for` resamples all structure masks in one nearest-neighbour pass
   (packed as bits of one ``uint16`` volume) and clips them to the study's brain (voxels
   with ``t1n > 0``; the unregistered masks are clipped to the atlas brain).

The result, a :class:`StructureAtlas`, answers distance queries in mm with k-d trees built on
the structures' surface voxels. It is cached so that several analyzers of one study (``nogo``,
``hotspot``) share a single registration: unregistered atlases by grid geometry, registered
ones by a digest of the study's ``t1n`` and affine (small LRU, one lock per key so concurrent
callers wait for the first registration instead of repeating it).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

from cerebrascan.atlas import SRI24_STRUCTURES, load_sri24_structure_mask, load_sri24_t1

logger = logging.getLogger(__name__)

RegistrationMode = Literal["auto", "always", "never"]
REGISTRATION_MODES: tuple[str, ...] = ("auto", "always", "never")

#: Default thresholds of "the anatomy matches the atlas by voxel index" (see assess_alignment).
DEFAULT_MIN_NCC = 0.85
DEFAULT_MIN_BRAIN_DICE = 0.95
#: Fixed seed of the metric's random sampling: registration is deterministic.
REGISTRATION_SEED = 20240917
_LPS = np.diag([-1.0, -1.0, 1.0])
_SITK_LOCK = threading.Lock()
_ANALYSIS_STRIDE = 2  # NCC / Dice on every 2nd voxel per axis: ~8x fewer voxels, same answer


@dataclass(frozen=True)
class AlignmentCheck:
    """Whether a study lies on the SRI24 grid with the SRI24 anatomy.

    Attributes:
        same_grid: shape and voxel size equal to the atlas T1's (voxel-index match).
        ncc: NCC of atlas T1 and study t1n inside the union of both brains (None when the
            grids differ).
        brain_dice: Dice of the atlas and study brain masks (None when the grids differ).
        matches: ``same_grid`` and both measures above their thresholds.
        reason: plain-language explanation of ``matches``.
    """

    same_grid: bool
    ncc: float | None
    brain_dice: float | None
    matches: bool
    reason: str


@dataclass(frozen=True)
class RegistrationOutcome:
    """What a registration did.

    Attributes:
        transform: SimpleITK transform mapping study (fixed) physical points to atlas points.
        metric: final Mattes mutual information (negative; lower is better).
        ncc_after: NCC of the resampled atlas T1 and the study t1n inside the study brain.
        duration_s: wall time of the registration and the mask resampling.
        iterations: optimiser iterations of the rigid and affine stages.
    """

    transform: Any
    metric: float
    ncc_after: float
    duration_s: float
    iterations: tuple[int, int]


def _validate_grid(t1n: npt.NDArray[Any], affine: npt.NDArray[Any]) -> None:
    if t1n.ndim != 3:
        raise ValueError(f"t1n must be a 3D volume, got shape {t1n.shape}")
    if np.asarray(affine).shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {np.asarray(affine).shape}")
    if not np.isfinite(affine).all() or abs(np.linalg.det(np.asarray(affine)[:3, :3])) < 1e-9:
        raise ValueError(f"affine must be finite and invertible, got {np.asarray(affine).tolist()}")


def spacing_of(affine: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Voxel size (mm) along each array axis: the column norms of the affine's 3x3 part."""
    norms: npt.NDArray[np.float64] = np.linalg.norm(
        np.asarray(affine, dtype=np.float64)[:3, :3], axis=0
    )
    return norms


def normalised_correlation(
    a: npt.NDArray[Any], b: npt.NDArray[Any], mask: npt.NDArray[np.bool_]
) -> float:
    """Pearson correlation of ``a`` and ``b`` over ``mask`` (0 for constant or empty input)."""
    x = a[mask].astype(np.float64)
    y = b[mask].astype(np.float64)
    if x.size < 2:
        return 0.0
    x -= x.mean()
    y -= y.mean()
    denominator = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denominator) if denominator > 0 else 0.0


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    """Dice coefficient of two bool masks (1.0 when both are empty)."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def assess_alignment(
    t1n: npt.NDArray[Any],
    affine: npt.NDArray[Any],
    min_ncc: float = DEFAULT_MIN_NCC,
    min_brain_dice: float = DEFAULT_MIN_BRAIN_DICE,
) -> AlignmentCheck:
    """Check whether the study's anatomy matches the SRI24 atlas voxel by voxel.

    The header's orientation and origin are not compared: BraTS files are on the SRI24 grid
    by voxel index whatever their header says. The image content decides instead.

    Args:
        t1n: study T1 ``(x, y, z)``, 0 outside the brain.
        affine: the study's 4x4 voxel-to-RAS affine.
        min_ncc: smallest NCC accepted as "same anatomy".
        min_brain_dice: smallest brain-mask Dice accepted as "same anatomy".

    Returns:
        The check, with its measures.

    Raises:
        ValueError: for a non-3D image or a singular affine.
    """
    _validate_grid(t1n, affine)
    atlas_t1, atlas_affine = load_sri24_t1()
    same_shape = t1n.shape == atlas_t1.shape
    same_spacing = bool(np.allclose(spacing_of(affine), spacing_of(atlas_affine), atol=1e-3))
    if not (same_shape and same_spacing):
        reason = (
            f"grid {t1n.shape} with voxel size {np.round(spacing_of(affine), 3).tolist()} mm "
            f"differs from the SRI24 grid {atlas_t1.shape} at 1 mm"
        )
        return AlignmentCheck(False, None, None, False, reason)
    step = slice(None, None, _ANALYSIS_STRIDE)
    study = np.asarray(t1n[step, step, step], dtype=np.float32)
    atlas = atlas_t1[step, step, step]
    study_brain = study > 0
    atlas_brain = atlas > 0
    ncc = normalised_correlation(study, atlas, study_brain | atlas_brain)
    brain_dice = dice(study_brain, atlas_brain)
    matches = ncc >= min_ncc and brain_dice >= min_brain_dice
    verdict = "matches" if matches else "does not match"
    reason = (
        f"SRI24 grid; anatomy {verdict} the atlas by voxel index (NCC {ncc:.3f}, threshold "
        f"{min_ncc}; brain Dice {brain_dice:.3f}, threshold {min_brain_dice})"
    )
    return AlignmentCheck(True, ncc, brain_dice, matches, reason)


def _sitk() -> Any:
    """The SimpleITK module, imported on first use (only registration needs it).

    Raises:
        RuntimeError: if SimpleITK is not installed.
    """
    try:
        return importlib.import_module("SimpleITK")
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            "atlas registration needs SimpleITK, which is not installed "
            "(pip install -c constraints.txt SimpleITK)"
        ) from exc


def _to_sitk(array: npt.NDArray[Any], affine: npt.NDArray[Any]) -> Any:
    """SimpleITK image of an ``(x, y, z)`` array with a RAS affine (converted to ITK's LPS)."""
    sitk = _sitk()
    affine = np.asarray(affine, dtype=np.float64)
    spacing = spacing_of(affine)
    direction = _LPS @ (affine[:3, :3] / spacing)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in _LPS @ affine[:3, 3]])
    image.SetDirection([float(v) for v in direction.ravel()])
    return image


def _from_sitk(image: Any) -> npt.NDArray[Any]:
    sitk = _sitk()
    return np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)))


def register_atlas_to_image(
    t1n: npt.NDArray[Any],
    affine: npt.NDArray[Any],
    *,
    seed: int = REGISTRATION_SEED,
    threads: int = 1,
    sampling_fraction: float = 0.02,
) -> RegistrationOutcome:
    """Register the SRI24 T1 (moving) to a study's t1n (fixed): rigid, then affine.

    Both stages use Mattes mutual information (32 bins) with random sampling of
    ``sampling_fraction`` of the voxels (fixed ``seed``), regular-step gradient descent with
    physical-shift scaling, and three levels (shrink 4, 2, 1 of 2 mm copies of the images,
    smoothing 2, 1, 0 voxels). The images are first resampled to 2 mm, which is plenty for a
    12-parameter transform and keeps a run within seconds.

    Args:
        t1n: study T1 ``(x, y, z)``, 0 outside the brain.
        affine: the study's 4x4 voxel-to-RAS affine.
        seed: seed of the metric sampling.
        threads: ITK threads during the registration (1: bit-reproducible; registrations
            are serialised because ITK's default thread count is process-wide).
        sampling_fraction: fraction of voxels sampled by the metric at each level.

    Returns:
        The transform and how the registration went.

    Raises:
        ValueError: for a non-3D image, a singular affine, an empty t1n or bad settings.
    """
    sitk = _sitk()
    _validate_grid(t1n, affine)
    if not np.any(t1n > 0):
        raise ValueError("t1n has no positive voxel; cannot register the atlas to it")
    if not 0.0 < sampling_fraction <= 1.0 or threads < 1:
        raise ValueError(
            f"sampling_fraction must be in (0, 1] and threads >= 1, got {sampling_fraction} "
            f"and {threads}"
        )
    with _SITK_LOCK:
        previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        try:
            return _register(t1n, affine, seed, threads, sampling_fraction)
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _register(
    t1n: npt.NDArray[Any],
    affine: npt.NDArray[Any],
    seed: int,
    threads: int,
    sampling_fraction: float,
) -> RegistrationOutcome:
    sitk = _sitk()
    start = time.perf_counter()
    atlas_t1, atlas_affine = load_sri24_t1()
    fixed = _downsample(_to_sitk(np.asarray(t1n, dtype=np.float32), affine), 2.0)
    moving = _downsample(_to_sitk(atlas_t1, atlas_affine), 2.0)

    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    rigid, rigid_iterations, _ = _run_stage(
        fixed, moving, initial, seed, threads, sampling_fraction, learning_rate=2.0
    )
    rigid = sitk.Euler3DTransform(rigid)
    affine_transform = sitk.AffineTransform(3)
    affine_transform.SetCenter(rigid.GetCenter())
    affine_transform.SetMatrix(rigid.GetMatrix())
    affine_transform.SetTranslation(rigid.GetTranslation())
    final, affine_iterations, metric = _run_stage(
        fixed, moving, affine_transform, seed, threads, sampling_fraction, learning_rate=1.0
    )
    final = sitk.AffineTransform(final)

    full_fixed = _to_sitk(np.asarray(t1n, dtype=np.float32), affine)
    warped = sitk.Resample(
        _to_sitk(atlas_t1, atlas_affine), full_fixed, final, sitk.sitkLinear, 0.0, sitk.sitkFloat32
    )
    step = slice(None, None, _ANALYSIS_STRIDE)
    warped_t1 = _from_sitk(warped)[step, step, step]
    study = np.asarray(t1n[step, step, step], dtype=np.float32)
    ncc_after = normalised_correlation(warped_t1, study, (study > 0) | (warped_t1 > 0))
    duration = time.perf_counter() - start
    logger.info(
        "registered SRI24 to study: MI %.4f, NCC %.3f, %d + %d iterations, %.1f s",
        metric,
        ncc_after,
        rigid_iterations,
        affine_iterations,
        duration,
    )
    return RegistrationOutcome(
        transform=final,
        metric=metric,
        ncc_after=ncc_after,
        duration_s=duration,
        iterations=(rigid_iterations, affine_iterations),
    )


def _downsample(image: Any, spacing_mm: float) -> Any:
    """Gaussian-smoothed copy of ``image`` resampled to an isotropic ``spacing_mm`` grid."""
    sitk = _sitk()
    old_spacing = np.asarray(image.GetSpacing())
    if np.all(old_spacing >= spacing_mm - 1e-6):
        return image
    size = np.asarray(image.GetSize())
    new_size = [max(1, round(float(n))) for n in size * old_spacing / spacing_mm]
    sigma = [max(0.0, 0.5 * (spacing_mm - s)) for s in old_spacing]
    smoothed = sitk.SmoothingRecursiveGaussian(image, sigma)
    return sitk.Resample(
        smoothed,
        new_size,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        [spacing_mm] * 3,
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


def _run_stage(
    fixed: Any,
    moving: Any,
    initial: Any,
    seed: int,
    threads: int,
    sampling_fraction: float,
    learning_rate: float,
) -> tuple[Any, int, float]:
    sitk = _sitk()
    method = sitk.ImageRegistrationMethod()
    method.SetNumberOfThreads(threads)
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling_fraction, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=learning_rate,
        minStep=1e-3,
        numberOfIterations=150,
        gradientMagnitudeTolerance=1e-6,
        relaxationFactor=0.6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    transform = method.Execute(fixed, moving)
    if isinstance(transform, sitk.CompositeTransform) and transform.GetNumberOfTransforms() == 1:
        transform = transform.GetNthTransform(0)
    return transform, int(method.GetOptimizerIteration()), float(method.GetMetricValue())


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


class StructureAtlas:
    """All SRI24 structure masks on one study grid, with mm distance queries.

    The masks are stored packed (bit ``k`` of a ``uint16`` volume is structure ``k`` of
    :data:`cerebrascan.atlas.SRI24_STRUCTURES`) and unpacked on first use. Distances are
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
        """Read-only bool mask of one structure on the study grid."""
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


_cache_lock = threading.Lock()
_key_locks: dict[tuple[Any, ...], threading.Lock] = {}
_cache: OrderedDict[tuple[Any, ...], StructureAtlas] = OrderedDict()
_CACHE_SIZE = 2  # the index-matched atlas and one registered study


def _cached(
    key: tuple[Any, ...], build: Callable[[], StructureAtlas]
) -> tuple[StructureAtlas, bool]:
    """The cached atlas for ``key`` (built once, even by concurrent callers) and whether it
    was already there."""
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key], True
        lock = _key_locks.setdefault(key, threading.Lock())
    with lock:
        with _cache_lock:
            if key in _cache:
                return _cache[key], True
        atlas = build()
        with _cache_lock:
            _cache[key] = atlas
            while len(_cache) > _CACHE_SIZE:
                old, _ = _cache.popitem(last=False)
                _key_locks.pop(old, None)
        return atlas, False


def clear_cache() -> None:
    """Forget every cached :class:`StructureAtlas` (tests; memory)."""
    with _cache_lock:
        _cache.clear()
        _key_locks.clear()


def _packed_atlas_masks() -> npt.NDArray[np.uint16]:
    """All SRI24 structure masks, clipped to the atlas brain, as bits of one volume."""
    atlas_t1, _ = load_sri24_t1()
    packed = np.zeros(atlas_t1.shape, dtype=np.uint16)
    for bit, name in enumerate(SRI24_STRUCTURES):
        packed[load_sri24_structure_mask(name)] |= np.uint16(1 << bit)
    packed[atlas_t1 <= 0] = 0
    return packed


def _unregistered(linear: npt.NDArray[np.float64]) -> StructureAtlas:
    return StructureAtlas(_packed_atlas_masks(), linear, None)


def _registered(t1n: npt.NDArray[Any], affine: npt.NDArray[Any], threads: int) -> StructureAtlas:
    sitk = _sitk()
    outcome = register_atlas_to_image(t1n, affine, threads=threads)
    start = time.perf_counter()
    _, atlas_affine = load_sri24_t1()
    resampled = sitk.Resample(
        _to_sitk(_packed_atlas_masks(), atlas_affine),
        _to_sitk(np.zeros(t1n.shape, dtype=np.uint8), affine),
        outcome.transform,
        sitk.sitkNearestNeighbor,
        0,
        sitk.sitkUInt16,
    )
    packed = _from_sitk(resampled).astype(np.uint16, copy=False)
    packed[np.asarray(t1n) <= 0] = 0
    duration = outcome.duration_s + time.perf_counter() - start
    outcome = RegistrationOutcome(
        outcome.transform, outcome.metric, outcome.ncc_after, duration, outcome.iterations
    )
    return StructureAtlas(packed, np.asarray(affine, dtype=np.float64)[:3, :3], outcome)


def _digest(t1n: npt.NDArray[Any], affine: npt.NDArray[Any]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(str((t1n.shape, str(t1n.dtype))).encode())
    h.update(np.ascontiguousarray(t1n).data)
    h.update(np.ascontiguousarray(affine, dtype=np.float64).data)
    return h.hexdigest()


@dataclass(frozen=True)
class AtlasMapping:
    """A :class:`StructureAtlas` for one study and why it was (not) registered.

    Attributes:
        atlas: the structure masks on the study grid.
        check: the alignment check.
        registered: whether the masks come from a registration.
        reason: why registration did or did not run.
        reused: the atlas came from the cache (e.g. another analyzer of the same study
            already registered it).
    """

    atlas: StructureAtlas
    check: AlignmentCheck
    registered: bool
    reason: str
    reused: bool


def structure_atlas_for(
    t1n: npt.NDArray[Any],
    affine: npt.NDArray[Any],
    *,
    mode: RegistrationMode = "auto",
    min_ncc: float = DEFAULT_MIN_NCC,
    min_brain_dice: float = DEFAULT_MIN_BRAIN_DICE,
    threads: int = 1,
) -> AtlasMapping:
    """SRI24 structure masks on a study's grid, registering the atlas only when needed.

    Args:
        t1n: study T1 ``(x, y, z)``, 0 outside the brain.
        affine: the study's 4x4 voxel-to-RAS affine.
        mode: ``"auto"`` registers when :func:`assess_alignment` says the anatomy does not
            match; ``"always"`` registers; ``"never"`` uses the masks by voxel index (only
            possible on the SRI24 grid).
        min_ncc: NCC threshold of the alignment check.
        min_brain_dice: brain-Dice threshold of the alignment check.
        threads: ITK threads of a registration (1: bit-reproducible).

    Returns:
        The mapping (cached: a second call for the same study reuses the registration).

    Raises:
        ValueError: for an unknown mode, ``"never"`` on another grid, or bad images.
    """
    if mode not in REGISTRATION_MODES:
        raise ValueError(f"mode must be one of {REGISTRATION_MODES}, got {mode!r}")
    t1n = np.asarray(t1n)
    affine = np.asarray(affine, dtype=np.float64)
    check = assess_alignment(t1n, affine, min_ncc, min_brain_dice)
    if mode == "never" and not check.same_grid:
        raise ValueError(f"registration mode 'never' needs the SRI24 grid: {check.reason}")
    register = mode == "always" or (mode == "auto" and not check.matches)
    if not register:
        reason = (
            check.reason
            if mode == "auto"
            else f"registration disabled (mode 'never'); {check.reason}"
        )
        # index-matched masks; distances use the study's voxel axes (translation-free)
        linear = np.round(affine[:3, :3], 6)
        key: tuple[Any, ...] = ("index", linear.tobytes())
        atlas, reused = _cached(key, lambda: _unregistered(linear))
        return AtlasMapping(atlas, check, False, reason, reused)
    reason = "registration forced (mode 'always')" if mode == "always" else check.reason
    key = ("registered", threads, _digest(t1n, affine))
    atlas, reused = _cached(key, lambda: _registered(t1n, affine, threads))
    return AtlasMapping(atlas, check, True, reason, reused)
