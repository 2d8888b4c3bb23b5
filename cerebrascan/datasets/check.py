"""The rules a BraTS-style dataset must meet, on facts already read (no I/O here).

Two namings are accepted, one per case folder ``<case>/``:

- BraTS 2023: ``<case>-t1n``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg`` (``.nii.gz`` or ``.nii``),
  labels 0 background, 1 NETC, 2 SNFH, 3 ET;
- BraTS 2021: ``<case>_t1``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg``, labels 0, 1, 2 and 4 for
  ET, which ``dataset add`` maps to 3.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

Naming = Literal["2023", "2021"]

#: per naming: file-name suffix -> the project's name (BraTS 2023 modalities and "seg")
SUFFIXES: dict[Naming, dict[str, str]] = {
    "2023": {"t1n": "t1n", "t1c": "t1c", "t2w": "t2w", "t2f": "t2f", "seg": "seg"},
    "2021": {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"},
}
SEPARATORS: dict[Naming, str] = {"2023": "-", "2021": "_"}
EXTENSIONS = (".nii.gz", ".nii")
REQUIRED = ("t1n", "t1c", "t2w", "t2f", "seg")
LABELS: dict[Naming, frozenset[int]] = {
    "2023": frozenset({0, 1, 2, 3}),
    "2021": frozenset({0, 1, 2, 4}),
}
AFFINE_TOLERANCE_MM = 1e-3


def classify_file(case: str, file_name: str) -> tuple[Naming, str] | None:
    """(naming, project name) of a file of case folder ``case``, or None for another file.

    >>> classify_file("BraTS2021_00001", "BraTS2021_00001_flair.nii.gz")
    ('2021', 't2f')
    """
    for extension in EXTENSIONS:
        if not file_name.endswith(extension):
            continue
        stem = file_name[: -len(extension)]
        naming: Naming
        for naming in ("2023", "2021"):
            prefix = case + SEPARATORS[naming]
            if stem.startswith(prefix) and stem[len(prefix) :] in SUFFIXES[naming]:
                return naming, SUFFIXES[naming][stem[len(prefix) :]]
    return None


def file_name(case: str, naming: Naming, name: str, extension: str = ".nii.gz") -> str:
    """File name of the project's ``name`` (``t1n``... ``seg``) in a case of ``naming``."""
    suffix = next(s for s, n in SUFFIXES[naming].items() if n == name)
    return f"{case}{SEPARATORS[naming]}{suffix}{extension}"


@dataclass(frozen=True)
class ImageFacts:
    """What the rules need to know of one NIfTI file."""

    name: str
    shape: tuple[int, ...]
    affine: tuple[tuple[float, ...], ...]
    all_finite: bool
    any_nonzero: bool
    digest: str
    """Hash of the voxel values (finds the same scan under two case names)."""
    label_values: tuple[float, ...] = ()
    """Distinct values of a segmentation (empty for an image)."""


@dataclass
class CaseFacts:
    """One case folder: its naming and its files' facts, by project name."""

    case: str
    location: str
    naming: Naming
    images: dict[str, ImageFacts] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)
    """project name -> why the file could not be read."""


@dataclass
class DatasetReport:
    """Problems (one line each; any makes the check fail) and notes (informational)."""

    cases: list[CaseFacts]
    problems: list[str]
    notes: list[str]

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


def _largest_difference(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
    return max(
        abs(x - y)
        for row_a, row_b in zip(a, b, strict=True)
        for x, y in zip(row_a, row_b, strict=True)
    )


def case_problems(case: CaseFacts) -> list[str]:
    """Missing or unreadable files, grids and affines that disagree, bad voxels and labels."""
    where = f"{case.location}:"
    problems = []
    for name in REQUIRED:
        if name in case.unreadable:
            problems.append(
                f"{where} {file_name(case.case, case.naming, name)} cannot be read: "
                f"{case.unreadable[name]}"
            )
        elif name not in case.images:
            problems.append(f"{where} missing {file_name(case.case, case.naming, name)}")
    present = [case.images[n] for n in REQUIRED if n in case.images]
    if present:
        first = present[0]
        for other in present[1:]:
            if other.shape != first.shape:
                problems.append(
                    f"{where} {other.name} grid {other.shape} differs from "
                    f"{first.name} {first.shape}"
                )
                continue
            difference = _largest_difference(other.affine, first.affine)
            if difference > AFFINE_TOLERANCE_MM:
                problems.append(
                    f"{where} {other.name} affine differs from {first.name} "
                    f"(by up to {difference:.3g} mm)"
                )
    for name in REQUIRED[:-1]:
        image = case.images.get(name)
        if image is None:
            continue
        if not image.all_finite:
            problems.append(f"{where} {image.name} has NaN or infinite voxels")
        elif not image.any_nonzero:
            problems.append(f"{where} {image.name} is empty (all voxels 0)")
    seg = case.images.get("seg")
    if seg is not None:
        allowed = LABELS[case.naming]
        bad = sorted(v for v in seg.label_values if v != v or v not in allowed or v != int(v))
        if bad:
            shown = ", ".join(f"{v:g}" for v in bad)
            problems.append(
                f"{where} {seg.name} has labels {shown} outside "
                f"{{{', '.join(str(v) for v in sorted(allowed))}}}"
            )
    return problems


def duplicate_problems(cases: Iterable[CaseFacts]) -> list[str]:
    """A case id found twice, or the same scan (t1n voxels) under two case ids."""
    problems = []
    by_id: dict[str, CaseFacts] = {}
    by_scan: dict[str, CaseFacts] = {}
    for case in cases:
        earlier = by_id.get(case.case)
        if earlier is not None:
            problems.append(
                f"{case.location}: duplicate case id {case.case} (also {earlier.location})"
            )
        else:
            by_id[case.case] = case
        scan = case.images.get("t1n")
        if scan is None:
            continue
        same = by_scan.get(scan.digest)
        if same is not None and same.case != case.case:
            problems.append(
                f"{case.location}: duplicate of case {same.case} "
                f"(same t1n voxels as {same.location})"
            )
        else:
            by_scan.setdefault(scan.digest, case)
    return problems


def naming_notes(cases: Iterable[CaseFacts]) -> list[str]:
    """A note on the BraTS 2021 cases: renamed and their label 4 mapped to 3 on ``add``."""
    old = [c for c in cases if c.naming == "2021"]
    if not old:
        return []
    with_four = sum(1 for c in old if 4 in c.images.get("seg", _NO_SEG).label_values)
    return [
        f"note: {len(old)} case(s) use BraTS 2021 naming (_t1, _t1ce, _t2, _flair, _seg); "
        f"`dataset add` renames them to BraTS 2023 naming and maps label 4 (ET) to 3 "
        f"({with_four} segmentation(s) hold label 4)"
    ]


_NO_SEG = ImageFacts("", (), (), True, False, "")


def check_cases(cases: list[CaseFacts]) -> DatasetReport:
    """All rules over a dataset's cases."""
    problems = [] if cases else ["no case folders (BraTS 2023 or 2021 file names) found"]
    for case in cases:
        problems.extend(case_problems(case))
    problems.extend(duplicate_problems(cases))
    return DatasetReport(cases=cases, problems=problems, notes=naming_notes(cases))
