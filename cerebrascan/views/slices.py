"""Slice and montage pictures: labels in palette colours over a display image, radiological.

Pure array maths and in-memory PNG encoding (Pillow); reading the volumes is the caller's job.
Every picture states its convention (orientation letters at the edges, "R on viewer's left"),
its slice numbers (stored-grid voxel index, as NIfTI viewers show it) and a scale bar in mm.
Without a display image the labels are drawn on a neutral background and the picture says so.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from cerebrascan.views.orientation import (
    EDGE_LETTERS,
    DisplayGrid,
    Plane,
    display_grid,
    display_slice,
    to_ras,
)
from cerebrascan.views.palette import FILL_ALPHA, LABEL_RGB

Style = Literal["fill", "outline"]
STYLES: tuple[Style, ...] = ("fill", "outline")
NEUTRAL_GREY = 48
"""Background level where no display image is stored."""
TARGET_MM_PER_PIXEL = 0.5
"""Output pixel size of a single slice (1 mm voxels drawn 2x2)."""
MONTAGE_MM_PER_PIXEL = 1.0
MAX_MONTAGE_COUNT = 36
TEXT = (235, 235, 235)
BAND = (0, 0, 0)


@dataclass(frozen=True)
class SliceVolumes:
    """A study's volumes turned to RAS display order once, for many slices.

    Attributes:
        grid: how the stored grid maps onto RAS.
        labels: label map in RAS order (uint8).
        background: display image in RAS order (uint8, windowed) or None.
        background_name: what the background is (``t1c``...), or None.
    """

    grid: DisplayGrid
    labels: npt.NDArray[np.uint8]
    background: npt.NDArray[np.uint8] | None
    background_name: str | None


def slice_volumes(
    labels: npt.NDArray[np.uint8],
    affine: npt.NDArray[np.float64],
    background: npt.NDArray[np.uint8] | None = None,
    background_name: str | None = None,
) -> SliceVolumes:
    """Wrap a stored label map (and display image on the same grid) for display.

    Raises:
        ValueError: the background is not on the label map's grid.
    """
    if background is not None and background.shape[:3] != labels.shape[:3]:
        raise ValueError(f"background shape {background.shape} != label map {labels.shape}")
    grid = display_grid(affine, labels.shape)
    return SliceVolumes(
        grid=grid,
        labels=np.asarray(to_ras(labels, grid), dtype=np.uint8),
        background=None
        if background is None
        else np.asarray(to_ras(background, grid), dtype=np.uint8),
        background_name=background_name if background is not None else None,
    )


def tumour_counts(volumes: SliceVolumes, plane: Plane) -> npt.NDArray[np.int64]:
    """Tumour voxels (any label > 0) per slice of ``plane``, in stored-grid index order."""
    normal = {"sagittal": 0, "coronal": 1, "axial": 2}[plane]
    others = tuple(axis for axis in range(3) if axis != normal)
    counts: npt.NDArray[np.int64] = np.count_nonzero(volumes.labels > 0, axis=others).astype(
        np.int64
    )
    return counts[::-1] if volumes.grid.reversed[normal] else counts


def default_index(volumes: SliceVolumes, plane: Plane) -> int:
    """Stored-grid index of the slice with the largest tumour area; the middle one without."""
    counts = tumour_counts(volumes, plane)
    if not counts.any():
        return len(counts) // 2
    return int(np.argmax(counts))


def montage_indices(volumes: SliceVolumes, plane: Plane, count: int) -> list[int]:
    """Up to ``count`` stored-grid indices evenly spaced through the tumour, inferior to
    superior (posterior to anterior, right to left); through the middle 80 % without tumour."""
    counts = tumour_counts(volumes, plane)
    present = np.flatnonzero(counts)
    if present.size:
        first, last = int(present.min()), int(present.max())
    else:
        first, last = int(len(counts) * 0.1), int(len(counts) * 0.9)
    positions = np.unique(np.rint(np.linspace(first, last, count)).astype(int))
    grid = volumes.grid
    # in display order: increasing RAS position
    return sorted(positions.tolist(), key=lambda index: grid.ras_index(plane, index))


def _outline(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Pixels of ``mask`` with a 4-neighbour outside it (image edges count as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    return mask & ~interior


def slice_rgb(
    volumes: SliceVolumes,
    plane: Plane,
    index: int,
    *,
    style: Style = "fill",
    alpha: float = FILL_ALPHA,
    show_labels: bool = True,
) -> npt.NDArray[np.uint8]:
    """The radiological RGB image (native voxel resolution) of stored-grid slice ``index``."""
    ras_index = volumes.grid.ras_index(plane, index)
    label_plane = display_slice(volumes.labels, plane, ras_index)
    if volumes.background is None:
        grey = np.full(label_plane.shape, float(NEUTRAL_GREY))
        alpha = 1.0  # full colour on the neutral background
    else:
        grey = display_slice(volumes.background, plane, ras_index).astype(np.float64)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if show_labels:
        for label, colour in LABEL_RGB.items():
            mask = label_plane == label
            if style == "outline":
                mask = _outline(mask)
                weight = 1.0
            else:
                weight = alpha
            rgb[mask] = (1.0 - weight) * rgb[mask] + weight * np.asarray(colour, dtype=np.float64)
    image: npt.NDArray[np.uint8] = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return image


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _scaled(
    rgb: npt.NDArray[np.uint8], pixel_mm: tuple[float, float], mm_per_px: float
) -> Image.Image:
    """``rgb`` resized so each output pixel is ``mm_per_px`` on both axes (nearest neighbour)."""
    rows, cols = rgb.shape[:2]
    size = (
        max(1, round(cols * pixel_mm[1] / mm_per_px)),
        max(1, round(rows * pixel_mm[0] / mm_per_px)),
    )
    return Image.fromarray(rgb, mode="RGB").resize(size, Image.Resampling.NEAREST)


def _scale_bar_mm(width_mm: float) -> int:
    """A round bar length near a fifth of the width (5, 10, 20, 50 or 100 mm)."""
    for length in (100, 50, 20, 10, 5):
        if length <= width_mm / 4:
            return length
    return 5


def _draw_scale_bar(
    draw: ImageDraw.ImageDraw, right: int, bottom: int, mm_per_px: float, width_px: int
) -> None:
    length_mm = _scale_bar_mm(width_px * mm_per_px)
    length_px = max(1, round(length_mm / mm_per_px))
    x1, y = right - 8, bottom - 10
    draw.rectangle((x1 - length_px, y, x1, y + 3), fill=TEXT)
    draw.text((x1 - length_px, y - 16), f"{length_mm} mm", fill=TEXT, font=_font(12))


def _draw_letters(
    draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], plane: Plane, size: int
) -> None:
    left, top, right, bottom = box
    font = _font(size)
    top_letter, bottom_letter, left_letter, right_letter = EDGE_LETTERS[plane]
    middle_x, middle_y = (left + right) // 2, (top + bottom) // 2
    draw.text((middle_x, top + 2), top_letter, fill=TEXT, font=font, anchor="mt")
    draw.text((middle_x, bottom - 2), bottom_letter, fill=TEXT, font=font, anchor="mb")
    draw.text((left + 3, middle_y), left_letter, fill=TEXT, font=font, anchor="lm")
    draw.text((right - 3, middle_y), right_letter, fill=TEXT, font=font, anchor="rm")


def _caption(volumes: SliceVolumes) -> str:
    if volumes.background_name is None:
        return "labels only: no display image stored (views.display_modalities)"
    return f"labels over {volumes.background_name}"


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def slice_png(
    volumes: SliceVolumes,
    plane: Plane,
    index: int,
    *,
    style: Style = "fill",
    alpha: float = FILL_ALPHA,
) -> bytes:
    """PNG of one slice with a header (plane, slice number, convention), orientation letters
    and a scale bar.

    Raises:
        IndexError: ``index`` is outside ``0..slices-1``.
    """
    count = volumes.grid.slice_count(plane)
    if not 0 <= index < count:
        raise IndexError(f"index {index} is outside 0..{count - 1} for the {plane} plane")
    rgb = slice_rgb(volumes, plane, index, style=style, alpha=alpha)
    picture = _scaled(rgb, volumes.grid.pixel_mm(plane), TARGET_MM_PER_PIXEL)
    band = 40
    canvas = Image.new("RGB", (max(picture.width, 320), picture.height + band), BAND)
    canvas.paste(picture, (0, band))
    draw = ImageDraw.Draw(canvas)
    draw.text(
        (6, 4),
        f"{plane} slice {index} of 0-{count - 1}   {_caption(volumes)}",
        fill=TEXT,
        font=_font(13),
    )
    draw.text((6, 21), "radiological: patient's right on viewer's left", fill=TEXT, font=_font(12))
    _draw_letters(draw, (0, band, picture.width, band + picture.height), plane, 16)
    _draw_scale_bar(draw, picture.width, band + picture.height, TARGET_MM_PER_PIXEL, picture.width)
    return _png(canvas)


def montage_png(
    volumes: SliceVolumes,
    plane: Plane,
    count: int,
    *,
    style: Style = "fill",
    alpha: float = FILL_ALPHA,
) -> bytes:
    """PNG of ``count`` slices evenly spaced through the tumour, each numbered, one scale bar.

    Raises:
        ValueError: ``count`` is outside 1..36.
    """
    if not 1 <= count <= MAX_MONTAGE_COUNT:
        raise ValueError(f"count {count} is outside 1..{MAX_MONTAGE_COUNT}")
    indices = montage_indices(volumes, plane, count)
    pixel_mm = volumes.grid.pixel_mm(plane)
    tiles = [
        _scaled(
            slice_rgb(volumes, plane, i, style=style, alpha=alpha), pixel_mm, MONTAGE_MM_PER_PIXEL
        )
        for i in indices
    ]
    columns = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    tile_w, tile_h = tiles[0].width, tiles[0].height
    band = 40
    canvas = Image.new("RGB", (max(columns * tile_w, 360), rows * tile_h + band), BAND)
    draw = ImageDraw.Draw(canvas)
    has_tumour = bool(tumour_counts(volumes, plane).any())
    what = "through the tumour" if has_tumour else "no tumour: evenly through the volume"
    draw.text((6, 4), f"{plane} montage, {len(tiles)} slices {what}", fill=TEXT, font=_font(13))
    draw.text(
        (6, 21),
        f"radiological: patient's right on viewer's left   {_caption(volumes)}",
        fill=TEXT,
        font=_font(12),
    )
    for position, (index, tile) in enumerate(zip(indices, tiles)):
        x, y = (position % columns) * tile_w, band + (position // columns) * tile_h
        canvas.paste(tile, (x, y))
        draw.text((x + 4, y + 3), str(index), fill=TEXT, font=_font(12))
        _draw_letters(draw, (x, y, x + tile_w, y + tile_h), plane, 10)
    _draw_scale_bar(draw, columns * tile_w, canvas.height, MONTAGE_MM_PER_PIXEL, tile_w * 2)
    return _png(canvas)
