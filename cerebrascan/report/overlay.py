"""Key image of a report: the axial slice with the largest tumour area, labels over t1c.

Pure array maths and in-memory PNG encoding; reading the volumes is the caller's job. The slice
is shown in radiological convention (patient's right on the viewer's left, anterior up), found
from the affine, so permuted or flipped grids give the same picture.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from cerebrascan.views.palette import LABEL_RGB

LABEL_COLOURS: dict[int, tuple[int, int, int]] = dict(LABEL_RGB)
"""Overlay colour per BraTS label: the one palette (``cerebrascan.views.palette``)."""
LABEL_ALPHA = 0.45
UPSCALE = 2


@dataclass(frozen=True)
class SliceChoice:
    """Which slice an overlay shows."""

    axis: int
    index: int
    tumour_area_mm2: float


def axial_axis(affine: npt.NDArray[np.float64]) -> int:
    """Voxel axis closest to scanner S (superior)."""
    return int(np.argmax(np.abs(np.asarray(affine)[2, :3])))


def largest_tumour_slice(
    labels: npt.NDArray[np.integer], affine: npt.NDArray[np.float64]
) -> SliceChoice | None:
    """The axial slice with the most tumour (any label > 0); None without tumour."""
    axis = axial_axis(affine)
    in_plane = [a for a in range(3) if a != axis]
    columns = np.asarray(affine)[:3, :3]
    pixel_mm2 = float(np.linalg.norm(np.cross(columns[:, in_plane[0]], columns[:, in_plane[1]])))
    counts = np.count_nonzero(labels > 0, axis=tuple(in_plane))
    if not counts.any():
        return None
    index = int(np.argmax(counts))
    return SliceChoice(axis=axis, index=index, tumour_area_mm2=float(counts[index]) * pixel_mm2)


def _radiological(
    plane: npt.NDArray[np.generic], axis: int, affine: npt.NDArray[np.float64]
) -> npt.NDArray[np.generic]:
    """Rows anterior to posterior, columns patient's right to left."""
    in_plane = [a for a in range(3) if a != axis]
    lr_axis = max(in_plane, key=lambda a: abs(affine[0, a]))
    ap_axis = in_plane[0] if lr_axis == in_plane[1] else in_plane[1]
    image = plane.T if in_plane[0] == lr_axis else plane  # now (ap, lr)
    if affine[1, ap_axis] > 0:  # a higher index is more anterior: put it on top
        image = image[::-1, :]
    if affine[0, lr_axis] > 0:  # a higher index is more rightward: put it on the left
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


def overlay_png(
    labels: npt.NDArray[np.integer],
    affine: npt.NDArray[np.float64],
    choice: SliceChoice,
    background: npt.NDArray[np.floating] | None,
) -> bytes:
    """PNG of ``labels`` on slice ``choice`` over ``background`` (t1c), or on black.

    Raises:
        ValueError: the background is not on the label map's grid.
    """
    if background is not None and background.shape[:3] != labels.shape:
        raise ValueError(f"background shape {background.shape} != label map {labels.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    label_plane = _radiological(
        np.take(labels, choice.index, axis=choice.axis), choice.axis, affine
    )
    if background is None:
        grey = np.zeros(label_plane.shape, dtype=np.float64)
    else:
        plane = np.take(np.asarray(background, dtype=np.float64), choice.index, axis=choice.axis)
        plane = _radiological(plane, choice.axis, affine).astype(np.float64)
        inside = plane[plane > 0]
        low, high = np.percentile(inside, [1, 99]) if inside.size else (0.0, 1.0)
        grey = np.clip((plane - low) / max(high - low, 1e-6), 0.0, 1.0)
    rgb = np.repeat((grey * 255.0)[..., None], 3, axis=2)
    alpha = LABEL_ALPHA if background is not None else 1.0  # on black: full colour
    for label, colour in LABEL_COLOURS.items():
        mask = label_plane == label
        rgb[mask] = (1.0 - alpha) * rgb[mask] + alpha * np.asarray(colour)
    image = Image.fromarray(rgb.round().astype(np.uint8), mode="RGB")
    image = image.resize((image.width * UPSCALE, image.height * UPSCALE), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=3)
    return buffer.getvalue()
