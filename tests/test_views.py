"""The study views computed as a reader would check them: decoded pictures, meshes, videos.

Small synthetic label maps (a right-hemisphere lesion) on RAS, flipped and permuted grids: the
lesion must show on the image's left (radiological) whatever the affine; surfaces must be
closed, outward, in RAS mm, within a voxel of the label map; videos must decode as H.264.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
from pathlib import Path

import imageio_ffmpeg
import nibabel as nib
import numpy as np
import pytest
import trimesh
from PIL import Image

from cerebrascan.views import palette
from cerebrascan.views.display import display_copy
from cerebrascan.views.mesh import EmptyRegionError, encode, surfaces
from cerebrascan.views.orientation import PLANES, display_grid
from cerebrascan.views.slices import (
    default_index,
    montage_indices,
    montage_png,
    slice_png,
    slice_volumes,
)
from cerebrascan.views.video import flythrough_frames, orbit_frames, write_gif, write_mp4
from cerebrascan.views.viewer_page import NIIVUE_FILE, NIIVUE_SHA256, VIEWER_DIR, viewer_html

SHAPE = (48, 56, 40)
SNFH_RGB = np.asarray(palette.rgb_of("SNFH"))
ET_RGB = np.asarray(palette.rgb_of("ET"))
HEADER_ROWS = 40  # the text band above a slice picture


def _lesion_labels() -> np.ndarray:
    """Labels on a RAS grid: SNFH ball with an ET core in the patient's right, anterior,
    superior part (high x, y, z); a head of intensity 100 around it as the display image."""
    labels = np.zeros(SHAPE, dtype=np.uint8)
    x, y, z = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    distance = np.sqrt((x - 34) ** 2 + (y - 38) ** 2 + (z - 26) ** 2)
    labels[distance < 7] = 2
    labels[distance < 3.5] = 3
    return labels


def _head() -> np.ndarray:
    head = np.zeros(SHAPE, dtype=np.uint8)
    head[4:-4, 4:-4, 4:-4] = 100
    return head


def _regrid(volume: np.ndarray, affine: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """The same patient stored differently: ``flip`` (x reversed, LAS-like), ``permute``
    (axes stored z, x, y with y reversed) or ``ras``. Voxel -> RAS mm stays the same."""
    if how == "ras":
        return volume, affine
    if how == "flip":
        flip = np.eye(4)
        flip[0, 0], flip[0, 3] = -1.0, volume.shape[0] - 1
        return np.ascontiguousarray(volume[::-1]), affine @ flip
    # stored[i, j, k] = volume[j, n_y - 1 - k, i]
    stored = np.ascontiguousarray(np.transpose(volume[:, ::-1, :], (2, 0, 1)))
    to_old = np.zeros((4, 4))
    to_old[0, 1] = 1.0  # old x = j
    to_old[1, 2], to_old[1, 3] = -1.0, volume.shape[1] - 1  # old y = n_y - 1 - k
    to_old[2, 0] = 1.0  # old z = i
    to_old[3, 3] = 1.0
    return stored, affine @ to_old


def _coloured(image: np.ndarray, rgb: np.ndarray, tolerance: int = 40) -> np.ndarray:
    return np.abs(image.astype(int) - rgb).sum(axis=2) < tolerance


def _decoded(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.mark.parametrize("how", ["ras", "flip", "permute"])
def test_a_right_sided_lesion_shows_on_the_image_left_for_any_affine(how: str) -> None:
    affine = np.diag([1.0, 1.2, 1.5, 1.0])
    labels, stored_affine = _regrid(_lesion_labels(), affine, how)
    head, _ = _regrid(_head(), affine, how)
    volumes = slice_volumes(labels, stored_affine, head, "t1c")
    for plane in PLANES:
        picture = _decoded(slice_png(volumes, plane, default_index(volumes, plane)))[HEADER_ROWS:]
        lesion = _coloured(picture, np.rint(0.55 * 100 + 0.45 * SNFH_RGB), tolerance=20)
        assert lesion.sum() > 50, (how, plane)
        rows, columns = np.nonzero(lesion)
        head_columns = np.nonzero(picture.sum(axis=2) > 0)[1]
        middle = (head_columns.min() + head_columns.max()) / 2
        if plane == "sagittal":  # anterior on the left, superior up
            assert columns.mean() < middle, how
        else:  # patient's right on the viewer's left
            assert columns.mean() < middle, (how, plane)
        # superior (coronal, sagittal) or anterior (axial): the upper half
        assert rows.mean() < picture.shape[0] / 2, (how, plane)


def test_default_index_is_the_largest_tumour_slice_on_the_stored_grid() -> None:
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    lesion = _lesion_labels()
    lesion[34, 28:48, 26] = 2  # the ball's slices tie: make x=34 and z=26 the largest
    labels, flipped_affine = _regrid(lesion, affine, "flip")
    volumes = slice_volumes(labels, flipped_affine)
    # sagittal slices cut x; stored x is reversed: the lesion centre x=34 is stored at 47-34
    assert default_index(volumes, "sagittal") == SHAPE[0] - 1 - 34
    assert default_index(volumes, "axial") == 26
    indices = montage_indices(volumes, "axial", 5)
    assert indices == sorted(indices) and indices[0] >= 26 - 7 and indices[-1] <= 26 + 7


def test_without_display_image_the_picture_says_so_and_shows_full_colour() -> None:
    volumes = slice_volumes(_lesion_labels(), np.eye(4))
    picture = _decoded(slice_png(volumes, "axial", 26))
    assert _coloured(picture, ET_RGB, 10).sum() > 20  # full palette colour, not blended
    with pytest.raises(IndexError, match=r"outside 0\.\.39"):
        slice_png(volumes, "axial", 40)


def test_montage_numbers_slices_through_the_tumour(tmp_path: Path) -> None:
    volumes = slice_volumes(_lesion_labels(), np.eye(4), _head(), "t1c")
    picture = _decoded(montage_png(volumes, "axial", 9))
    assert picture.shape[0] > 3 * SHAPE[1] and picture.shape[1] >= 3 * SHAPE[0]
    assert _coloured(picture, np.rint(0.55 * 100 + 0.45 * SNFH_RGB), 20).sum() > 200
    # no tumour: evenly through the volume, still a picture
    empty = slice_volumes(np.zeros(SHAPE, np.uint8), np.eye(4))
    assert _decoded(montage_png(empty, "coronal", 4)).shape[0] > SHAPE[2]
    with pytest.raises(ValueError, match="count 37"):
        montage_png(volumes, "axial", 37)


@pytest.mark.parametrize("how", ["ras", "flip", "permute"])
def test_surfaces_are_closed_outward_in_ras_mm_and_match_the_voxels(how: str) -> None:
    affine = np.diag([1.0, 1.2, 1.5, 1.0])
    affine[:3, 3] = [-20.0, 30.0, 5.0]
    labels, stored_affine = _regrid(_lesion_labels(), affine, how)
    assert (np.linalg.det(stored_affine[:3, :3]) < 0) == (how != "ras")  # left-handed grids
    for part in surfaces(labels, stored_affine, "all") + surfaces(labels, stored_affine, "WT"):
        mesh = part.mesh
        assert mesh.is_watertight and mesh.is_winding_consistent, (how, part.name)
        assert mesh.volume > 0, "faces wound outward"
        assert abs(mesh.volume - part.voxel_volume_mm3) / part.voxel_volume_mm3 < 0.03
        # the label map's extent in RAS mm (voxel centres +- half a voxel)
        mask = np.isin(labels, [2, 3] if part.name in ("SNFH", "WT") else [3])
        if part.name == "SNFH":
            mask = labels == 2
        centres = np.argwhere(mask) @ stored_affine[:3, :3].T + stored_affine[:3, 3]
        voxel = np.abs(stored_affine[:3, :3]).sum(axis=1)
        low, high = centres.min(axis=0) - voxel / 2, centres.max(axis=0) + voxel / 2
        assert np.all(np.abs(mesh.bounds[0] - low) <= voxel), (how, part.name)
        assert np.all(np.abs(mesh.bounds[1] - high) <= voxel), (how, part.name)


def test_mesh_files_carry_names_colours_and_ras(tmp_path: Path) -> None:
    parts = surfaces(_lesion_labels(), np.eye(4), "all")
    glb = tmp_path / "tumour.glb"
    glb.write_bytes(encode(parts, "glb"))
    scene = trimesh.load(glb)
    assert sorted(scene.geometry) == ["ET", "SNFH"]
    colours = {
        name: tuple(g.visual.material.baseColorFactor[:3]) for name, g in scene.geometry.items()
    }
    assert colours == {"ET": palette.rgb_of("ET"), "SNFH": palette.rgb_of("SNFH")}
    obj = encode(parts, "obj").decode()
    assert "# SPACE=RAS" in obj.splitlines()[:3] and "o SNFH" in obj and "o ET" in obj
    stl = encode(parts, "stl")
    assert stl[:9] == b"SPACE=RAS"
    (tmp_path / "tumour.stl").write_bytes(stl)
    loaded = trimesh.load(tmp_path / "tumour.stl")
    assert len(loaded.faces) == sum(len(p.mesh.faces) for p in parts)


def test_edge_cases_one_voxel_border_and_empty() -> None:
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[10, 10, 10] = 3  # one voxel
    labels[0:4, 0:4, 0:4] = 1  # touching the grid's corner
    netc, et = surfaces(labels, np.eye(4), "NETC")[0], surfaces(labels, np.eye(4), "ET")[0]
    for part in (netc, et):
        assert part.mesh.is_watertight and part.mesh.volume > 0
        assert abs(part.mesh.volume - part.voxel_volume_mm3) / part.voxel_volume_mm3 < 0.03
    assert np.all(np.abs(et.mesh.bounds - [[9.5] * 3, [10.5] * 3]) <= 1.0)
    # voxels touching only along an edge, and a one-voxel-thick hollow shell (an SNFH rim)
    labels[20, 20, 20] = labels[21, 21, 20] = 2
    labels[30:37, 30:37, 20:27] = 2
    labels[31:36, 31:36, 21:26] = 0
    snfh = surfaces(labels, np.diag([-1.0, 1.0, 1.0, 1.0]), "SNFH")[0]
    assert snfh.mesh.is_watertight and snfh.mesh.volume > 0
    assert abs(snfh.mesh.volume - snfh.voxel_volume_mm3) / snfh.voxel_volume_mm3 < 0.03
    labels[labels == 2] = 0
    with pytest.raises(EmptyRegionError, match="SNFH has no voxels"):
        surfaces(labels, np.eye(4), "SNFH")
    with pytest.raises(EmptyRegionError, match="no tumour"):
        surfaces(np.zeros(SHAPE, np.uint8), np.eye(4), "all")


def _probe(path: Path) -> str:
    """ffmpeg's description of a video's stream (imageio-ffmpeg ships no ffprobe)."""
    result = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
        capture_output=True,
        text=True,
    )
    return result.stderr


def test_videos_decode_as_h264_with_every_frame(tmp_path: Path) -> None:
    volumes = slice_volumes(_lesion_labels(), np.eye(4), _head(), "t1c")
    frames = flythrough_frames(volumes, "axial", "rgb")
    assert len(frames) == SHAPE[2] and frames[0].shape[0] % 16 == 0
    write_mp4(frames, tmp_path / "fly.mp4", fps=12)
    stream = _probe(tmp_path / "fly.mp4")
    assert re.search(r"Video: h264.*yuv420p", stream), stream
    assert f"{frames[0].shape[1]}x{frames[0].shape[0]}" in stream
    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "fly.mp4"))[0] == SHAPE[2]
    # the lesion's slices are in colour, the others grey
    assert (np.abs(frames[26][..., 1].astype(int) - frames[26][..., 2]) > 30).any()
    assert not (np.abs(frames[5][..., 1].astype(int) - frames[5][..., 2]) > 30).any()
    grey = flythrough_frames(volumes, "coronal", "grey")
    assert all(np.array_equal(f[..., 0], f[..., 1]) for f in grey)
    write_gif(grey, tmp_path / "fly.gif", fps=12)
    gif = Image.open(tmp_path / "fly.gif")
    # Pillow merges identical neighbours into one longer frame: the length is what is kept
    total_ms = 0
    for frame in range(gif.n_frames):
        gif.seek(frame)
        total_ms += gif.info["duration"]
    assert gif.n_frames > 1 and abs(total_ms - len(grey) * 1000 / 12) < 1000 / 12 * 2

    parts = surfaces(_lesion_labels(), np.eye(4), "all")
    head_points = np.argwhere(_head()[::2, ::2, ::2] > 0) * 2.0  # RAS mm on this grid
    orbit = orbit_frames(parts, head_points, head_spacing_mm=2.0, frame_count=12, size=96)
    assert len(orbit) == 12 and orbit[0].shape == (96, 96, 3)

    # the lesion (patient's right) is on the left of the first frame, seen from the front
    def lesion_columns(frame: np.ndarray) -> np.ndarray:
        return np.nonzero(np.abs(frame[..., 1].astype(int) - frame[..., 2]) > 30)[1]

    assert lesion_columns(orbit[0]).size and lesion_columns(orbit[0]).mean() < 48
    # half a turn later it is on the right
    assert lesion_columns(orbit[6]).mean() > 48
    write_mp4(orbit, tmp_path / "orbit.mp4", fps=12)
    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "orbit.mp4"))[0] == 12


def test_display_copy_is_windowed_uint8_that_keeps_the_head() -> None:
    image = np.zeros(SHAPE, dtype=np.float32)
    image[4:-4, 4:-4, 4:-4] = np.linspace(10.0, 5000.0, 40 * 48 * 32).reshape(40, 48, 32)
    copy = display_copy(image)
    assert copy.dtype == np.uint8 and copy[0, 0, 0] == 0
    assert copy[4:-4, 4:-4, 4:-4].min() >= 1 and copy.max() == 255
    assert display_copy(np.zeros(SHAPE, np.float32)).max() == 0


def test_palette_exports_agree() -> None:
    itk = palette.as_itksnap().splitlines()
    assert any(re.match(r'\s*3\s+255\s+225\s+25\s+1\s+1\s+1\s+"ET"', line) for line in itk)
    slicer = palette.as_slicer().splitlines()
    assert "1 NETC 220 50 47 255" in slicer
    niivue = palette.niivue_label_map()
    assert niivue["I"] == [0, 1, 2, 3] and niivue["labels"][2] == "SNFH"
    assert (niivue["R"][2], niivue["G"][2], niivue["B"][2]) == palette.rgb_of("SNFH")
    listing = json.loads(palette.as_json())
    assert [e["name"] for e in listing["regions"]] == ["TC", "WT"]
    with pytest.raises(KeyError, match="no palette colour for 'XX'"):
        palette.rgb_of("XX")


def test_vendored_niivue_matches_its_record_and_licence() -> None:
    digest = hashlib.sha256(NIIVUE_FILE.read_bytes()).hexdigest()
    assert digest == NIIVUE_SHA256
    record = (VIEWER_DIR / "VERSION").read_text()
    assert f"niivue.umd.js_sha256: {digest}" in record and "version: 0.69.0" in record
    assert "BSD 2-Clause License" in (VIEWER_DIR / "LICENSE-niivue").read_text()
    page = viewer_html("0" * 32)
    assert "__CONFIG_JSON__" not in page and "niivue-0.69.0.umd.js" in page
    assert "http://" not in page and "https://" not in page  # no CDN: works offline


def test_display_grid_of_an_oblique_affine_uses_the_nearest_axes() -> None:
    angle = np.deg2rad(20)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    grid = display_grid(rotation, SHAPE)
    assert grid.source_axis == (0, 1, 2) and grid.reversed == (False, False, False)
    assert nib.aff2axcodes(rotation) == ("R", "A", "S")
