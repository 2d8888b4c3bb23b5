"""A stored study's views: read its label map and display copy, render, cache in its folder.

The I/O half of ``cerebrascan/views/`` (the other modules compute). Slices and montages are
rendered per request from a small in-memory cache of turned volumes; meshes and videos are
rendered once and kept in ``<study>/views/`` (written under a temporary name, renamed into place),
so a second request is a file read. Every refusal is an :class:`InputError` with a 4xx status.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cerebrascan.errors import InputError
from cerebrascan.store.artefacts import DISPLAY_CONTRASTS, SEGMENTATION_FILE, StudyArtefacts
from cerebrascan.views import mesh as meshes
from cerebrascan.views import slices, video
from cerebrascan.views.orientation import PLANES, Plane
from cerebrascan.views.palette import FILL_ALPHA, LABELS
from cerebrascan.views.settings import ViewSettings

logger = logging.getLogger(__name__)

BACKGROUND_PREFERENCE: tuple[str, ...] = ("t1c", "t1n", "t2f", "t2w")
"""The default background: the first kept display copy in this order."""
CACHED_VOLUMES = 4
CACHE_VERSION = "v1"
"""Part of every cached file's name: a change of rendering renames, so old files are unused."""


class StudyViews:
    """Pictures, surfaces, videos of stored studies.

    Args:
        store: the study artefact folder.
        settings: the ``views`` settings section.
    """

    def __init__(self, store: StudyArtefacts, settings: ViewSettings | None = None) -> None:
        self.store = store
        self.settings = settings or ViewSettings()
        self._volumes: OrderedDict[tuple[str, str, float], slices.SliceVolumes] = OrderedDict()
        self._lock = threading.Lock()

    def kept_contrasts(self, study_id: str) -> list[str]:
        """The contrasts with a display copy in the study's folder, in preference order."""
        return [c for c in BACKGROUND_PREFERENCE if self.store.display_image_path(study_id, c)]

    def background_for(self, study_id: str, requested: str | None) -> str | None:
        """The display copy to draw under the labels: ``requested`` (``none``: no image), or by
        default the first kept one (None when the study has none).

        Raises:
            InputError: 400 for an unknown contrast, 404 if that contrast was not kept.
        """
        kept = self.kept_contrasts(study_id)
        if requested is None:
            return kept[0] if kept else None
        if requested == "none":
            return None
        if requested not in DISPLAY_CONTRASTS:
            raise InputError(
                f"background {requested[:20]!r} is not one of "
                f"{', '.join((*DISPLAY_CONTRASTS, 'none'))}",
                status_code=400,
            )
        if requested not in kept:
            raise InputError(
                f"no display copy of {requested} was kept for study {study_id} (kept: "
                f"{', '.join(kept) or 'none'}); set CEREBRASCAN_VIEWS__DISPLAY_MODALITIES before "
                "analysing, or ask for background=none",
                status_code=404,
            )
        return requested

    def index(self, study_id: str) -> dict[str, object]:
        """What the study's views can show: kept contrasts, the default background, the labels
        present (with voxel counts) and the slice counts per plane.

        Raises:
            InputError: 400 for a malformed id, 404 if the study is absent.
        """
        kept = self.kept_contrasts(study_id)
        turned = self.volumes(study_id, None)
        counts = np.bincount(turned.labels.ravel(), minlength=4)
        present = {e.name: int(counts[e.label]) for e in LABELS if e.label and counts[e.label]}
        return {
            "display_contrasts": kept,
            "background": kept[0] if kept else None,
            "labels_present": list(present),
            "label_voxels": present,
            "slices": {plane: turned.grid.slice_count(plane) for plane in PLANES},
            "default_index": {plane: slices.default_index(turned, plane) for plane in PLANES},
        }

    def display_volume(self, study_id: str, contrast: str) -> Path:
        """Path of the display copy of ``contrast`` (NIfTI, for the viewer).

        Raises:
            InputError: 400 for an unknown contrast, 404 if it was not kept.
        """
        chosen = self.background_for(study_id, contrast)
        path = self.store.display_image_path(study_id, chosen) if chosen else None
        if path is None:
            raise InputError(f"no display copy of {contrast} for study {study_id}", status_code=404)
        return path

    def volumes(self, study_id: str, background: str | None) -> slices.SliceVolumes:
        """The study's label map (and display copy ``background``) turned for display.

        Raises:
            InputError: 400 for a malformed id, 404 if the study is absent.
        """
        label_path = self.store.artefact(study_id, SEGMENTATION_FILE)
        key = (study_id, background or "none", label_path.stat().st_mtime)
        with self._lock:
            if key in self._volumes:
                self._volumes.move_to_end(key)
                return self._volumes[key]
        labels, affine = self.store.load_labels(study_id)
        image = None
        if background is not None:
            loaded = self.store.load_display_image(study_id, background)
            if loaded is not None and loaded[0].shape == labels.shape:
                image = loaded[0]
        turned = slices.slice_volumes(labels, affine, image, background)
        with self._lock:
            self._volumes[key] = turned
            while len(self._volumes) > CACHED_VOLUMES:
                self._volumes.popitem(last=False)
        return turned

    def slice_png(
        self,
        study_id: str,
        plane: Plane,
        index: int | None,
        *,
        background: str | None = None,
        style: slices.Style = "fill",
        alpha: float = FILL_ALPHA,
    ) -> bytes:
        """PNG of one slice (default: the one with the largest tumour area).

        Raises:
            InputError: 400 for an index out of range, 404 for an absent study or contrast.
        """
        turned = self.volumes(study_id, self.background_for(study_id, background))
        chosen = slices.default_index(turned, plane) if index is None else index
        count = turned.grid.slice_count(plane)
        if not 0 <= chosen < count:
            raise InputError(
                f"index {chosen} is outside 0..{count - 1} for the {plane} plane", status_code=400
            )
        return slices.slice_png(turned, plane, chosen, style=style, alpha=alpha)

    def montage_png(
        self,
        study_id: str,
        plane: Plane,
        count: int,
        *,
        background: str | None = None,
        style: slices.Style = "fill",
    ) -> bytes:
        """PNG of ``count`` slices through the tumour.

        Raises:
            InputError: 400 for a count outside 1..36, 404 for an absent study or contrast.
        """
        if not 1 <= count <= slices.MAX_MONTAGE_COUNT:
            raise InputError(
                f"count {count} is outside 1..{slices.MAX_MONTAGE_COUNT}", status_code=400
            )
        turned = self.volumes(study_id, self.background_for(study_id, background))
        return slices.montage_png(turned, plane, count, style=style)

    def mesh(
        self, study_id: str, region: meshes.MeshRegion, mesh_format: meshes.MeshFormat
    ) -> Path:
        """The cached surface file of ``region``.

        Raises:
            InputError: 409 when the region has no voxels, 404 for an absent study.
        """
        folder = self.store.views_cache(study_id)
        path = folder / f"{CACHE_VERSION}-mesh-{region}.{mesh_format}"

        def render() -> bytes:
            labels, affine = self.store.load_labels(study_id)
            try:
                parts = meshes.surfaces(labels, affine, region)
            except meshes.EmptyRegionError as exc:
                raise InputError(f"study {study_id}: {exc}", status_code=409) from exc
            return meshes.encode(parts, mesh_format)

        return _cached(path, render)

    def flythrough(
        self,
        study_id: str,
        plane: Plane,
        mode: video.VideoMode,
        video_format: video.VideoFormat,
        *,
        background: str | None = None,
    ) -> Path:
        """The cached fly-through video through ``plane``.

        Raises:
            InputError: 404 for an absent study or contrast.
        """
        chosen = self.background_for(study_id, background)
        folder = self.store.views_cache(study_id)
        name = f"{CACHE_VERSION}-flythrough-{plane}-{mode}-{chosen or 'none'}.{video_format}"

        def render(path: Path) -> None:
            frames = video.flythrough_frames(self.volumes(study_id, chosen), plane, mode)
            _write_video(frames, path, video_format, self.settings.video_fps)

        return _cached_file(folder / name, render)

    def orbit(self, study_id: str, video_format: video.VideoFormat) -> Path:
        """The cached orbit video of the tumour surfaces around the head.

        Raises:
            InputError: 409 when the study has no tumour, 404 for an absent study.
        """
        folder = self.store.views_cache(study_id)
        frames_count = self.settings.orbit_frames
        path = folder / f"{CACHE_VERSION}-orbit-{frames_count}.{video_format}"

        def render(target: Path) -> None:
            labels, affine = self.store.load_labels(study_id)
            try:
                parts = meshes.surfaces(labels, affine, "all")
            except meshes.EmptyRegionError as exc:
                raise InputError(f"study {study_id}: {exc}", status_code=409) from exc
            head, spacing = self._head_points(study_id, labels, affine)
            frames = video.orbit_frames(
                parts, head, head_spacing_mm=spacing, frame_count=frames_count
            )
            _write_video(frames, target, video_format, self.settings.video_fps)

        return _cached_file(path, render)

    def _head_points(
        self, study_id: str, labels: npt.NDArray[np.uint8], affine: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.float64] | None, float]:
        """RAS mm of every third head voxel of the first kept display copy, and their spacing."""
        kept = self.kept_contrasts(study_id)
        if not kept:
            return None, 3.0
        loaded = self.store.load_display_image(study_id, kept[0])
        if loaded is None or loaded[0].shape != labels.shape:
            return None, 3.0
        step = 3
        head = np.argwhere(loaded[0][::step, ::step, ::step] > 0) * step
        spacing = float(np.linalg.norm(affine[:3, :3], axis=0).max()) * step
        return head @ affine[:3, :3].T + affine[:3, 3], spacing


def _write_video(
    frames: list[npt.NDArray[np.uint8]], path: Path, video_format: video.VideoFormat, fps: int
) -> None:
    if video_format == "mp4":
        video.write_mp4(frames, path, fps)
    else:
        video.write_gif(frames, path, fps)


def _cached(path: Path, render: Callable[[], bytes]) -> Path:
    """``path``; rendered by ``render`` and written atomically when it does not exist yet."""

    def write(target: Path) -> None:
        target.write_bytes(render())

    return _cached_file(path, write)


def _cached_file(path: Path, write: Callable[[Path], None]) -> Path:
    """``path``; ``write`` fills a temporary file renamed onto it when it does not exist yet."""
    if path.is_file():
        return path
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(handle)
    try:
        write(Path(staging))
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
    logger.info("rendered %s", path.name)
    return path
