"""The one label colour table: slices, meshes, viewer, report and the exported colour tables.

BraTS labels NETC (1), SNFH (2), ET (3) are filled in their colours; the regions TC and WT are
drawn as outlines or as their own surfaces in theirs. No official BraTS palette exists; these
colours keep the report's (red, green, yellow) and tell the labels apart for common forms of
colour blindness by lightness as well as hue. Pure text and numbers: no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

PaletteFormat = Literal["json", "itksnap", "slicer", "niivue"]
PALETTE_FORMATS: tuple[PaletteFormat, ...] = ("json", "itksnap", "slicer", "niivue")


@dataclass(frozen=True)
class PaletteEntry:
    """One label or region: its name, BraTS label value (None for a region), colour, meaning."""

    name: str
    label: int | None
    rgb: tuple[int, int, int]
    description: str


LABELS: tuple[PaletteEntry, ...] = (
    PaletteEntry("NETC", 1, (220, 50, 47), "non-enhancing tumour core"),
    PaletteEntry("SNFH", 2, (60, 180, 75), "surrounding non-enhancing FLAIR hyperintensity"),
    PaletteEntry("ET", 3, (255, 225, 25), "enhancing tumour"),
)
"""The BraTS 2023 labels, in label order."""
REGIONS: tuple[PaletteEntry, ...] = (
    PaletteEntry("TC", None, (245, 130, 48), "tumour core = NETC + ET (outline / surface)"),
    PaletteEntry("WT", None, (0, 130, 200), "whole tumour = NETC + SNFH + ET (outline / surface)"),
)
"""The BraTS regions, drawn as outlines or their own surfaces."""
ENTRIES: dict[str, PaletteEntry] = {entry.name: entry for entry in (*LABELS, *REGIONS)}
LABEL_RGB: dict[int, tuple[int, int, int]] = {
    entry.label: entry.rgb for entry in LABELS if entry.label is not None
}
"""BraTS label value -> colour."""
FILL_ALPHA = 0.45
"""Opacity of a label filled over an image (full colour on the neutral background)."""


def rgb_of(name: str) -> tuple[int, int, int]:
    """Colour of a label or region name (NETC, SNFH, ET, TC, WT).

    Raises:
        KeyError: an unknown name.
    """
    if name not in ENTRIES:
        raise KeyError(f"no palette colour for {name!r}; known: {', '.join(ENTRIES)}")
    return ENTRIES[name].rgb


def as_json() -> str:
    """The palette as JSON: ``{"labels": [...], "regions": [...]}`` with name, label, rgb, hex."""

    def entry(item: PaletteEntry) -> dict[str, object]:
        return {
            "name": item.name,
            "label": item.label,
            "rgb": list(item.rgb),
            "hex": "#{:02x}{:02x}{:02x}".format(*item.rgb),
            "description": item.description,
        }

    return json.dumps(
        {"labels": [entry(e) for e in LABELS], "regions": [entry(e) for e in REGIONS]}, indent=2
    )


def as_itksnap() -> str:
    """ITK-SNAP label description file (``IDX R G B A VIS MSH "LABEL"``)."""
    lines = [
        "# ITK-SNAP Label Description File (CerebraScan palette, BraTS 2023 labels)",
        "# Columns: IDX R G B A(0..1) VIS(0/1) MSH(0/1) LABEL",
        '    0     0    0    0        0  0  0    "Clear Label"',
    ]
    for entry in LABELS:
        r, g, b = entry.rgb
        lines.append(f'{entry.label:5d} {r:5d} {g:4d} {b:4d}        1  1  1    "{entry.name}"')
    return "\n".join(lines) + "\n"


def as_slicer() -> str:
    """3D Slicer colour table (``.ctbl``: ``index name R G B A``)."""
    lines = [
        "# Color table file CerebraScan-BraTS2023.ctbl (CerebraScan palette)",
        f"# {len(LABELS) + 1} values",
        "0 Background 0 0 0 0",
    ]
    lines += [f"{e.label} {e.name} {e.rgb[0]} {e.rgb[1]} {e.rgb[2]} 255" for e in LABELS]
    return "\n".join(lines) + "\n"


def niivue_label_map() -> dict[str, list[int] | list[str]]:
    """NiiVue's label colour map (``vol.setColormapLabel``): R, G, B, A, I and labels."""
    entries = [PaletteEntry("Background", 0, (0, 0, 0), ""), *LABELS]
    return {
        "R": [e.rgb[0] for e in entries],
        "G": [e.rgb[1] for e in entries],
        "B": [e.rgb[2] for e in entries],
        "A": [0] + [255] * len(LABELS),
        "I": [int(e.label or 0) for e in entries],
        "labels": [e.name for e in entries],
    }


def exported(palette_format: PaletteFormat) -> tuple[str, str, str]:
    """(body, media type, file name) of the palette in ``palette_format``."""
    if palette_format == "itksnap":
        return as_itksnap(), "text/plain; charset=utf-8", "cerebrascan-itksnap-labels.txt"
    if palette_format == "slicer":
        return as_slicer(), "text/plain; charset=utf-8", "cerebrascan-slicer.ctbl"
    if palette_format == "niivue":
        return json.dumps(niivue_label_map()), "application/json", "cerebrascan-niivue.json"
    return as_json(), "application/json", "cerebrascan-palette.json"
