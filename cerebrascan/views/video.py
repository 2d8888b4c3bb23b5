"""Fly-through and orbit videos: frames in numpy, H.264 MP4 through the imageio-ffmpeg binary.

A fly-through sweeps a plane's slices in RAS order (inferior to superior, posterior to anterior,
right to left), grey (the display image alone) or RGB (labels blended in palette colours). An
orbit turns the tumour surfaces about the superior axis, seen from the front, rendered off-screen
without a display by a small z-buffer that splats the surfaces' vertices (2x2 pixels each)
(Lambert shading); the head, when a display image is stored, is its grey silhouette behind them.
MP4s are H.264 yuv420p with ``+faststart`` (they play in a browser); GIFs are for e-mail. The
writers write only the file they are given.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import imageio_ffmpeg
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from cerebrascan.views.mesh import Surface
from cerebrascan.views.orientation import Plane, display_slice
from cerebrascan.views.slices import NEUTRAL_GREY, SliceVolumes, slice_rgb

VideoMode = Literal["grey", "rgb"]
VIDEO_MODES: tuple[VideoMode, ...] = ("grey", "rgb")
VideoFormat = Literal["mp4", "gif"]
VIDEO_FORMATS: tuple[VideoFormat, ...] = ("mp4", "gif")
MACRO_BLOCK = 16
"""H.264 frames are padded to a multiple of this (imageio-ffmpeg's macro block)."""
FLYTHROUGH_MM_PER_PIXEL = 1.0
MAX_GIF_FRAMES = 60
HEAD_GREY = 70


def _padded(frame: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """``frame`` padded with black to a multiple of :data:`MACRO_BLOCK` on both axes."""
    rows, cols = frame.shape[:2]
    pad_rows = (-rows) % MACRO_BLOCK
    pad_cols = (-cols) % MACRO_BLOCK
    return np.pad(frame, ((0, pad_rows), (0, pad_cols), (0, 0)))


def flythrough_frames(
    volumes: SliceVolumes, plane: Plane, mode: VideoMode
) -> list[npt.NDArray[np.uint8]]:
    """One frame per slice of ``plane`` in RAS order, numbered with the stored-grid index."""
    grid = volumes.grid
    rows_mm, cols_mm = grid.pixel_mm(plane)
    font = ImageFont.load_default(size=12)
    frames = []
    for ras_index in range(grid.slice_count(plane)):
        index = grid.stored_index(plane, ras_index)
        rgb = slice_rgb(volumes, plane, index, show_labels=mode == "rgb")
        if mode == "grey" and volumes.background is None:
            # nothing but the neutral grey to sweep: show the labels as grey levels
            labels = display_slice(volumes.labels, plane, ras_index)
            shades = np.asarray([NEUTRAL_GREY, 120, 180, 250], dtype=np.uint8)
            rgb = np.repeat(shades[np.minimum(labels, 3)][..., None], 3, axis=2)
        image = Image.fromarray(rgb, mode="RGB")
        size = (
            max(1, round(rgb.shape[1] * cols_mm / FLYTHROUGH_MM_PER_PIXEL)),
            max(1, round(rgb.shape[0] * rows_mm / FLYTHROUGH_MM_PER_PIXEL)),
        )
        image = image.resize(size, Image.Resampling.NEAREST)
        ImageDraw.Draw(image).text((3, 2), f"{plane} {index}  R|L", fill=(235, 235, 235), font=font)
        frames.append(_padded(np.asarray(image)))
    return frames


def _rotation_z(angle: float) -> npt.NDArray[np.float64]:
    c, s = math.cos(angle), math.sin(angle)
    return np.asarray([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def orbit_frames(
    parts: list[Surface],
    head_points_mm: npt.NDArray[np.float64] | None,
    *,
    head_spacing_mm: float = 3.0,
    frame_count: int = 48,
    size: int = 320,
) -> list[npt.NDArray[np.uint8]]:
    """Frames of the surfaces turning once about the superior axis, seen from the front.

    The camera looks from anterior to posterior, so at the first frame the patient's right is on
    the viewer's left (as in a radiological image); ``head_points_mm`` (RAS mm), when given,
    draw the head's silhouette behind the tumour and set the field of view; they lie about
    ``head_spacing_mm`` apart (the silhouette is drawn on pixels at least that large).
    """
    points, normals, colours = [], [], []
    for part in parts:
        mesh = part.mesh
        points.append(np.asarray(mesh.vertices))
        normals.append(np.asarray(mesh.vertex_normals))
        count = len(mesh.vertices)
        colours.append(np.tile(np.asarray(part.rgb, dtype=np.float64), (count, 1)))
    xyz = np.concatenate(points)
    normal = np.concatenate(normals)
    colour = np.concatenate(colours)
    extent_points = head_points_mm if head_points_mm is not None and len(head_points_mm) else xyz
    centre = (extent_points.min(axis=0) + extent_points.max(axis=0)) / 2.0
    radius = float(np.linalg.norm(extent_points - centre, axis=1).max()) or 1.0
    pixels_per_mm = (size / 2 - 8) / radius
    downscale = max(1, math.ceil(head_spacing_mm * pixels_per_mm * 1.5))
    light = np.asarray([0.3, 1.0, 0.5])
    light /= np.linalg.norm(light)
    offsets = np.asarray([[0, 0], [1, 0], [0, 1], [1, 1]])
    frames = []
    for frame in range(frame_count):
        rotation = _rotation_z(2.0 * math.pi * frame / frame_count)
        image = np.zeros((size, size, 3), dtype=np.float64)
        if head_points_mm is not None and len(head_points_mm):
            head = (head_points_mm - centre) @ rotation.T
            # the silhouette on pixels as large as the points' spacing: no gaps between them
            coarse = size // downscale
            hx, hy = _screen(head, pixels_per_mm / downscale, coarse)
            covered = np.zeros((coarse, coarse), dtype=bool)
            covered[hy, hx] = True
            covered = np.kron(covered, np.ones((downscale, downscale), dtype=bool))
            covered = np.pad(covered, ((0, size - covered.shape[0]), (0, size - covered.shape[1])))
            image[covered] = HEAD_GREY
        rotated = (xyz - centre) @ rotation.T
        turned_normals = normal @ rotation.T
        sx, sy = _screen(rotated, pixels_per_mm, size)
        depth = rotated[:, 1]  # towards the camera (anterior) is nearer
        shade = 0.35 + 0.65 * np.clip(turned_normals @ light, 0.0, 1.0)
        lit = colour * shade[:, None]
        px = np.clip((sx[:, None] + offsets[:, 0]).ravel(), 0, size - 1)
        py = np.clip((sy[:, None] + offsets[:, 1]).ravel(), 0, size - 1)
        point_depth = np.repeat(depth, len(offsets))
        flat = py * size + px
        # z-buffer: one sort of (pixel, distance from the camera) keys; the first key of each
        # pixel is its nearest point (distance quantised to 0.01 mm)
        distance = np.rint((depth.max() - point_depth) * 100.0).astype(np.int64)
        order = np.argsort((flat.astype(np.int64) << 32) | distance)
        ordered = flat[order]
        first = np.ones(len(ordered), dtype=bool)
        first[1:] = ordered[1:] != ordered[:-1]
        nearest = order[first] // len(offsets)
        image.reshape(-1, 3)[ordered[first]] = lit[nearest]
        frames.append(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    return frames


def _screen(
    points: npt.NDArray[np.float64], pixels_per_mm: float, size: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Screen (column, row) of camera-space points: patient's right (+x) on the left, up is S."""
    column = np.rint(size / 2 - points[:, 0] * pixels_per_mm).astype(np.intp)
    row = np.rint(size / 2 - points[:, 2] * pixels_per_mm).astype(np.intp)
    return np.clip(column, 0, size - 1), np.clip(row, 0, size - 1)


def write_mp4(frames: list[npt.NDArray[np.uint8]], path: Path, fps: int) -> None:
    """Encode ``frames`` (equal-size RGB, sides multiples of 16) as H.264 yuv420p MP4."""
    rows, cols = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (cols, rows),
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        fps=fps,
        codec="libx264",
        macro_block_size=MACRO_BLOCK,
        output_params=["-movflags", "+faststart", "-preset", "veryfast", "-crf", "23"],
    )
    writer.send(None)  # start the ffmpeg process
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def write_gif(frames: list[npt.NDArray[np.uint8]], path: Path, fps: int) -> None:
    """Write ``frames`` as a looping GIF (at most :data:`MAX_GIF_FRAMES`, evenly chosen)."""
    step = max(1, math.ceil(len(frames) / MAX_GIF_FRAMES))
    chosen = [Image.fromarray(frame, mode="RGB") for frame in frames[::step]]
    chosen[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=chosen[1:],
        duration=round(1000 * step / fps),
        loop=0,
    )
