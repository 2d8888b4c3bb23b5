"""SRI24 structure masks on a study's grid, registering the atlas only when needed.

:func:`structure_atlas_for` puts the steps together:

1. :func:`cerebrascan.atlas.alignment.assess_alignment` decides whether the study already lies
   on the SRI24 grid with the SRI24 anatomy (BraTS data do);
2. if not (or when forced), :func:`cerebrascan.atlas.registration.register_atlas_to_image`
   registers the atlas T1 to the study ``t1n``;
3. the structure masks, packed as bits of one ``uint16`` volume, are used by voxel index or
   warped through the transform in one nearest-neighbour pass, and clipped to the brain
   (voxels with ``t1n > 0``; the unregistered masks are clipped to the atlas brain).

The resulting :class:`~cerebrascan.atlas.structures.StructureAtlas` is cached so that several
analyzers of one study share a single registration: unregistered atlases by grid geometry,
registered ones by a digest of the study's ``t1n`` and affine (small LRU, one lock per key).
The atlas comes from :mod:`cerebrascan.atlas.files`' loaders, which read each file once per
process; everything else here is computation.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from cerebrascan.atlas.alignment import (
    DEFAULT_MIN_BRAIN_DICE,
    DEFAULT_MIN_NCC,
    AlignmentCheck,
    assess_alignment,
)
from cerebrascan.atlas.cache import BuildOnceCache
from cerebrascan.atlas.files import SRI24_STRUCTURES, load_sri24_structure_mask, load_sri24_t1
from cerebrascan.atlas.registration import (
    RegistrationOutcome,
    register_atlas_to_image,
    warp_packed_masks,
)
from cerebrascan.atlas.structures import StructureAtlas, clip_to_brain, pack_structure_masks

RegistrationMode = Literal["auto", "always", "never"]
REGISTRATION_MODES: tuple[str, ...] = ("auto", "always", "never")

_CACHE: BuildOnceCache[StructureAtlas] = BuildOnceCache(size=2)
"""The index-matched atlas and one registered study."""


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


def clear_cache() -> None:
    """Forget every cached :class:`StructureAtlas` (tests; memory)."""
    _CACHE.clear()


def _atlas_masks() -> npt.NDArray[np.uint16]:
    """All SRI24 structure masks, clipped to the atlas brain, as bits of one volume."""
    atlas_t1, _ = load_sri24_t1()
    masks = {name: load_sri24_structure_mask(name) for name in SRI24_STRUCTURES}
    return clip_to_brain(pack_structure_masks(masks, atlas_t1.shape), atlas_t1)


def _unregistered(linear: npt.NDArray[np.float64]) -> StructureAtlas:
    return StructureAtlas(_atlas_masks(), linear, None)


def _registered(t1n: npt.NDArray[Any], affine: npt.NDArray[Any], threads: int) -> StructureAtlas:
    atlas_t1, atlas_affine = load_sri24_t1()
    outcome = register_atlas_to_image(t1n, affine, atlas_t1, atlas_affine, threads=threads)
    start = time.perf_counter()
    packed = warp_packed_masks(_atlas_masks(), atlas_affine, t1n.shape, affine, outcome.transform)
    clip_to_brain(packed, t1n)
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
        mode: ``"auto"`` registers when :func:`~cerebrascan.atlas.alignment.assess_alignment`
            says the anatomy does not match; ``"always"`` registers; ``"never"`` uses the
            masks by voxel index (only possible on the SRI24 grid).
        min_ncc: NCC threshold of the alignment check.
        min_brain_dice: brain-Dice threshold of the alignment check.
        threads: ITK threads of a registration (1: bit-reproducible).

    Returns:
        The mapping (cached: a second call for the same study reuses the registration).

    Raises:
        ValueError: for an unknown mode, ``"never"`` on another grid, or bad images.
        cerebrascan.atlas.files.AtlasNotInstalledError: the atlas wheels are missing.
    """
    if mode not in REGISTRATION_MODES:
        raise ValueError(f"mode must be one of {REGISTRATION_MODES}, got {mode!r}")
    t1n = np.asarray(t1n)
    affine = np.asarray(affine, dtype=np.float64)
    atlas_t1, atlas_affine = load_sri24_t1()
    check = assess_alignment(t1n, affine, atlas_t1, atlas_affine, min_ncc, min_brain_dice)
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
        atlas, reused = _CACHE.get_or_build(key, lambda: _unregistered(linear))
        return AtlasMapping(atlas, check, False, reason, reused)
    reason = "registration forced (mode 'always')" if mode == "always" else check.reason
    key = ("registered", threads, _digest(t1n, affine))
    atlas, reused = _CACHE.get_or_build(key, lambda: _registered(t1n, affine, threads))
    return AtlasMapping(atlas, check, True, reason, reused)
