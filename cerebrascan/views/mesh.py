"""Tumour surfaces: marching cubes per label or region, in scanner RAS millimetres.

Each surface is closed (the mask is padded before marching cubes, so a label touching the grid's
border still gives a watertight shell), wound outward whatever the affine's handedness (faces are
inverted when the enclosed volume comes out negative), lightly smoothed (Taubin, which does not
shrink) and then offset along its normals so that its volume equals the voxel volume it stands
for. Encoders write GLB (named nodes, palette colours), OBJ and binary STL, the last two with
``SPACE=RAS`` in their header: 3D Slicer reads coordinates as LPS without it. Pure maths and
in-memory encoding.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import trimesh
from skimage.measure import marching_cubes

from cerebrascan.imaging.regions import structure_mask
from cerebrascan.views.palette import rgb_of

MeshFormat = Literal["glb", "stl", "obj"]
MESH_FORMATS: tuple[MeshFormat, ...] = ("glb", "stl", "obj")
MeshRegion = Literal["NETC", "SNFH", "ET", "TC", "WT", "all"]
MESH_REGIONS: tuple[MeshRegion, ...] = ("NETC", "SNFH", "ET", "TC", "WT", "all")
ALL_PARTS: tuple[str, ...] = ("NETC", "SNFH", "ET")
"""``region=all``: the three labels, each its own named surface."""
SMOOTHING_ITERATIONS = 8
MARCHING_LEVEL = 0.45
OFFSET_STEPS = 6
MEDIA_TYPES: dict[MeshFormat, str] = {
    "glb": "model/gltf-binary",
    "stl": "model/stl",
    "obj": "model/obj",
}


class EmptyRegionError(ValueError):
    """The requested region has no voxels: there is no surface to draw."""


@dataclass(frozen=True)
class Surface:
    """One named, closed, outward-wound surface in RAS mm and the voxel volume it encloses."""

    name: str
    mesh: trimesh.Trimesh
    voxel_volume_mm3: float

    @property
    def rgb(self) -> tuple[int, int, int]:
        """Palette colour."""
        return rgb_of(self.name)


def parts_of(region: MeshRegion) -> tuple[str, ...]:
    """The named surfaces a request for ``region`` gives."""
    return ALL_PARTS if region == "all" else (region,)


def surface(labels: npt.NDArray[np.integer], affine: npt.NDArray[np.float64], name: str) -> Surface:
    """The surface of label or region ``name`` (NETC, SNFH, ET, TC, WT).

    Raises:
        EmptyRegionError: the region has no voxels.
    """
    mask = structure_mask(labels, name)
    voxels = int(np.count_nonzero(mask))
    affine = np.asarray(affine, dtype=np.float64)
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    if voxels == 0:
        raise EmptyRegionError(f"region {name} has no voxels: there is no surface to draw")
    present = np.argwhere(mask)
    low, high = present.min(axis=0), present.max(axis=0) + 1
    crop = mask[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    padded = np.pad(crop, 1).astype(np.float32)  # closed even at the grid's border
    # not 0.5: on a 0/1 mask every ambiguous face sits exactly at 0.5 and voxels touching along
    # an edge come out sharing it (not watertight); just below, they join consistently
    vertices, faces, _, _ = marching_cubes(padded, level=MARCHING_LEVEL, allow_degenerate=False)
    vertices = vertices + (low - 1)
    ras = vertices @ affine[:3, :3].T + affine[:3, 3]
    mesh = trimesh.Trimesh(vertices=ras, faces=faces, process=True)
    trimesh.smoothing.filter_taubin(mesh, lamb=0.5, nu=-0.53, iterations=SMOOTHING_ITERATIONS)
    if mesh.volume < 0:  # a left-handed affine mirrors the shell: wind it outward again
        mesh.invert()
    voxel_mm = float(np.linalg.norm(affine[:3, :3], axis=0).max())
    mesh = _volume_matched(mesh, mask, voxel_mm3, voxel_mm)
    mesh.metadata["name"] = name
    return Surface(name=name, mesh=mesh, voxel_volume_mm3=voxels * voxel_mm3)


def _volume_matched(
    mesh: trimesh.Trimesh, mask: npt.NDArray[np.bool_], voxel_mm3: float, voxel_mm: float
) -> trimesh.Trimesh:
    """``mesh`` moved along its vertex normals until it encloses the volume of its voxels.

    Marching cubes cuts voxel corners (a one-voxel label becomes an octahedron of a sixth of its
    volume; a one-voxel-thick shell of SNFH encloses almost nothing): an offset along the
    outward normals restores the volume, growing the solid outward and a cavity inward. Each
    step is ``(target - volume) / area``, at most one voxel, :data:`OFFSET_STEPS` at most.
    """
    target = float(np.count_nonzero(mask)) * voxel_mm3
    for _ in range(OFFSET_STEPS):
        # a flat sliver encloses nothing (trimesh divides by its zero volume: quiet that)
        with np.errstate(divide="ignore", invalid="ignore"):
            volume = float(mesh.volume)
        area = float(mesh.area)
        if area <= 0 or abs(volume - target) <= 0.005 * target:
            break
        step = float(np.clip((target - volume) / area, -voxel_mm, voxel_mm))
        mesh.vertices = mesh.vertices + mesh.vertex_normals * step
    return mesh


def surfaces(
    labels: npt.NDArray[np.integer], affine: npt.NDArray[np.float64], region: MeshRegion
) -> list[Surface]:
    """The surfaces for ``region``; for ``all`` the non-empty labels among NETC, SNFH, ET.

    Raises:
        EmptyRegionError: nothing to draw (no voxel in the region, or no tumour for ``all``).
    """
    found = []
    for name in parts_of(region):
        try:
            found.append(surface(labels, affine, name))
        except EmptyRegionError:
            if region != "all":
                raise
    if not found:
        raise EmptyRegionError("the study has no tumour voxels: there is no surface to draw")
    return found


def encode(parts: list[Surface], mesh_format: MeshFormat) -> bytes:
    """``parts`` as one GLB, OBJ or binary STL file."""
    if mesh_format == "glb":
        return _glb(parts)
    if mesh_format == "obj":
        return _obj(parts)
    return _stl(parts)


def _glb(parts: list[Surface]) -> bytes:
    scene = trimesh.Scene()
    for part in parts:
        mesh = part.mesh.copy()
        material = trimesh.visual.material.PBRMaterial(
            name=part.name,
            baseColorFactor=[*part.rgb, 255],
            metallicFactor=0.0,
            roughnessFactor=0.8,
        )
        mesh.visual = trimesh.visual.TextureVisuals(material=material)
        scene.add_geometry(mesh, node_name=part.name, geom_name=part.name)
    data: bytes = trimesh.exchange.gltf.export_glb(scene)
    return data


def _obj(parts: list[Surface]) -> bytes:
    lines = [
        "# CerebraScan tumour surfaces, coordinates in scanner RAS millimetres",
        "# SPACE=RAS",
    ]
    offset = 1
    for part in parts:
        r, g, b = part.rgb
        lines.append(f"# {part.name} colour {r} {g} {b}")
        lines.append(f"o {part.name}")
        lines.extend(f"v {x:.4f} {y:.4f} {z:.4f}" for x, y, z in part.mesh.vertices)
        faces = np.asarray(part.mesh.faces) + offset
        lines.extend(f"f {a} {b_} {c}" for a, b_, c in faces)
        offset += len(part.mesh.vertices)
    return ("\n".join(lines) + "\n").encode("ascii")


def _stl(parts: list[Surface]) -> bytes:
    names = "+".join(part.name for part in parts)
    header = f"SPACE=RAS CerebraScan {names}".encode("ascii")[:80].ljust(80, b" ")
    triangles = [np.asarray(part.mesh.triangles, dtype=np.float32) for part in parts]
    normals = [np.asarray(part.mesh.face_normals, dtype=np.float32) for part in parts]
    all_triangles = np.concatenate(triangles)
    all_normals = np.concatenate(normals)
    records = np.zeros(
        len(all_triangles),
        dtype=np.dtype([("normal", "<f4", 3), ("vertices", "<f4", (3, 3)), ("attr", "<u2")]),
    )
    records["normal"] = all_normals
    records["vertices"] = all_triangles
    buffer = io.BytesIO()
    buffer.write(header)
    buffer.write(struct.pack("<I", len(records)))
    buffer.write(records.tobytes())
    return buffer.getvalue()
