"""Choose one series per contrast by rules on header attributes (maths on headers).

The rules use the JSON format of the MONAI Deploy App SDK's ``DICOMSeriesSelectorOperator``::

    {"selections": [{"name": "t1c", "description": "...", "conditions": {Keyword: value}}]}

A series is a candidate for a selection's ``name`` (a contrast) when every condition matches:

- a string matches case-insensitively, then as a regular expression (``re.search``); a leading
  ``!`` negates it (an absent attribute then matches: nothing to exclude);
- a number matches exactly; ``[value, ">"]`` (``>``, ``>=``, ``<``, ``<=``, ``!=``) by
  relation; ``[low, high]`` as an inclusive range;
- a list of strings matches a multi-valued attribute holding every item; ``"!ITEM"`` must be
  absent (``["ORIGINAL", "!SECONDARY"]``);
- ``ImageOrientationPatient: "Axial"`` (or Coronal, Sagittal) matches the slices' main plane.

Several selections may share a name: any one matching is enough, and the answer records which.
Series under ``min_slices`` slices are never candidates. Among a contrast's candidates the
choice is: 3D acquisitions first, then the smallest voxel, then the most slices; candidates
still equal on all three are ambiguous. ``series_map`` (contrast -> SeriesInstanceUID) overrides
the rules for the contrasts it names.
"""

from __future__ import annotations

import json
import logging
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.datadict import tag_for_keyword

from cerebrascan.errors import InputError
from cerebrascan.inputs.dicom.geometry import series_voxel_size
from cerebrascan.inputs.dicom.index import IndexedSeries, StudyIndex, plane_name

logger = logging.getLogger(__name__)

DEFAULT_RULES_FILE = Path(__file__).resolve().parent / "rules" / "default_rules.json"
_RELATIONS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "!=": operator.ne,
}


@dataclass(frozen=True)
class SelectionRule:
    """One entry of ``selections``: the contrast it proposes and the conditions."""

    name: str
    index: int
    description: str
    conditions: Mapping[str, Any]

    @property
    def label(self) -> str:
        """How the answer names the rule: ``t1c #0 (T1-weighted with ...)``."""
        return f"{self.name} #{self.index}" + (f" ({self.description})" if self.description else "")


def load_rules(path: Path | None = None) -> tuple[SelectionRule, ...]:
    """Read and check a rules file (default: the bundled ``rules/default_rules.json``).

    Raises:
        ValueError: the file is not valid JSON in the selector format, or a condition names a
            keyword that is not a DICOM keyword (a configuration error, found at start-up).
    """
    source = path or DEFAULT_RULES_FILE
    try:
        document = json.loads(Path(source).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"dicom.rules_file {str(source)!r} is not readable JSON: {exc}") from exc
    selections = document.get("selections") if isinstance(document, dict) else None
    if not isinstance(selections, list) or not selections:
        raise ValueError(f"dicom.rules_file {str(source)!r} has no 'selections' list")
    rules = []
    for index, entry in enumerate(selections):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"selection {index} in {str(source)!r} has no 'name'")
        conditions = entry.get("conditions", {})
        if not isinstance(conditions, dict):
            raise ValueError(f"selection {index} ({entry['name']}): 'conditions' is not an object")
        for keyword, expected in conditions.items():
            if tag_for_keyword(keyword) is None:
                raise ValueError(
                    f"selection {index} ({entry['name']}): {keyword!r} is not a DICOM keyword"
                )
            _check_condition(keyword, expected, f"selection {index} ({entry['name']})")
        rules.append(
            SelectionRule(
                name=entry["name"],
                index=index,
                description=str(entry.get("description", "")),
                conditions=conditions,
            )
        )
    return tuple(rules)


def _check_condition(keyword: str, expected: Any, where: str) -> None:
    if isinstance(expected, str):
        pattern = expected[1:] if expected.startswith("!") else expected
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{where}: {keyword} regex {expected!r} is invalid: {exc}") from exc
    elif isinstance(expected, list) and len(expected) == 2 and _is_number(expected[0]):
        if not (expected[1] in _RELATIONS or _is_number(expected[1])):
            raise ValueError(f"{where}: {keyword} {expected!r} is neither a relation nor a range")
    elif isinstance(expected, list) and not all(isinstance(item, str) for item in expected):
        raise ValueError(f"{where}: {keyword} {expected!r} must be strings, a relation or range")
    elif not isinstance(expected, (str, list, int, float)):
        raise ValueError(f"{where}: {keyword} {expected!r} has an unsupported type")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _values(actual: Any) -> list[str]:
    if actual is None or actual == "":
        return []
    if isinstance(actual, (list, tuple)) or type(actual).__name__ == "MultiValue":
        return [str(v).strip() for v in actual]
    return [str(actual).strip()]


def _number(actual: Any) -> float | None:
    values = _values(actual)
    if len(values) != 1:
        return None
    try:
        return float(values[0])
    except ValueError:
        return None


def condition_matches(series: IndexedSeries, keyword: str, expected: Any) -> bool:
    """Whether ``series`` meets one rule condition (see the module docstring)."""
    if keyword == "ImageOrientationPatient" and isinstance(expected, str):
        plane = plane_name(series.header)
        negate = expected.startswith("!")
        wanted = expected.lstrip("!").lower()
        return (plane is not None and plane[0] == wanted) != negate
    actual = series.attribute(keyword)
    if isinstance(expected, str):
        negate = expected.startswith("!")
        pattern = expected[1:] if negate else expected
        text = "\\".join(_values(actual))
        found = bool(text) and (
            text.lower() == pattern.lower() or re.search(pattern, text, re.IGNORECASE) is not None
        )
        return found != negate
    if _is_number(expected):
        number = _number(actual)
        return number is not None and number == float(expected)
    if isinstance(expected, list) and len(expected) == 2 and _is_number(expected[0]):
        number = _number(actual)
        if number is None:
            return False
        if isinstance(expected[1], str):
            return _RELATIONS[expected[1]](number, float(expected[0]))
        low, high = sorted((float(expected[0]), float(expected[1])))
        return low <= number <= high
    present = {value.upper() for value in _values(actual)}
    for item in expected:
        if item.startswith("!"):
            if item[1:].upper() in present:
                return False
        elif item.upper() not in present:
            return False
    return True


def failed_conditions(series: IndexedSeries, rule: SelectionRule) -> list[str]:
    """The conditions of ``rule`` that ``series`` does not meet, as ``Keyword: expected``."""
    return [
        f"{keyword}: {json.dumps(expected)}"
        for keyword, expected in rule.conditions.items()
        if not condition_matches(series, keyword, expected)
    ]


@dataclass(frozen=True)
class RoleChoice:
    """The series chosen for one contrast and why."""

    role: str
    series: IndexedSeries
    rule: str
    candidates: tuple[str, ...]
    reason: str


@dataclass
class Selection:
    """The outcome of selection: the choices, the other candidates and the problems found.

    ``problems`` is empty when every contrast has exactly one series from one study; the
    analysis refuses otherwise (:meth:`require_complete`), the inspection reports them.
    """

    choices: dict[str, RoleChoice] = field(default_factory=dict)
    candidates: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rejected: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def require_complete(self) -> None:
        """Raise the problems as one 422.

        Raises:
            InputError: 422 listing every problem with its candidate SeriesInstanceUIDs.
        """
        if self.problems:
            raise InputError(
                "; ".join(self.problems) + ". Name the series per contrast with series_map "
                '({"t1c": SeriesInstanceUID, ...}); POST /dicom/inspect lists them.',
                field="series_map",
            )


def _tie_key(series: IndexedSeries) -> tuple[int, float, int]:
    voxel = series_voxel_size(series)
    volume = round(voxel[0] * voxel[1] * voxel[2], 3) if voxel else float("inf")
    is_3d = str(series.attribute("MRAcquisitionType") or "").upper() == "3D"
    return (0 if is_3d else 1, volume, -series.slice_count)


def select_series(
    index: StudyIndex,
    rules: Sequence[SelectionRule],
    roles: Sequence[str],
    *,
    series_map: Mapping[str, str] | None = None,
    min_slices: int = 20,
) -> Selection:
    """Propose one series per contrast in ``roles``.

    Args:
        index: the upload's series.
        rules: the selection rules (:func:`load_rules`).
        roles: the contrasts needed (the served model's modalities).
        series_map: contrast -> SeriesInstanceUID, overriding the rules.
        min_slices: series with fewer slices are never candidates.

    Returns:
        The :class:`Selection`; its ``problems`` list what blocks an analysis.

    Raises:
        InputError: 400 when ``series_map`` names a contrast not in ``roles``; 422 when it names
            a series that is not in the upload.
    """
    mapping = dict(series_map or {})
    unknown_roles = sorted(set(mapping) - set(roles))
    if unknown_roles:
        raise InputError(
            f"unknown contrast(s) {unknown_roles}; expected some of {list(roles)}",
            status_code=400,
            field="series_map",
        )
    for role, uid in mapping.items():
        if index.by_uid(uid) is None:
            raise InputError(
                f"{role}: series {uid!r} is not in the upload; series present: "
                f"{[s.series_uid for s in index.series]}",
                field="series_map",
            )
    selection = Selection()
    eligible: list[IndexedSeries] = []
    for series in index.series:
        if series.slice_count < min_slices:
            selection.rejected[series.series_uid] = [
                f"{series.slice_count} slices, under dicom.min_slices={min_slices}"
            ]
        else:
            eligible.append(series)
    matched: dict[str, list[tuple[IndexedSeries, SelectionRule]]] = {role: [] for role in roles}
    for series in eligible:
        reasons = []
        for rule in rules:
            if rule.name not in matched:
                continue
            failures = failed_conditions(series, rule)
            if failures:
                reasons.append(f"not {rule.label}: {', '.join(failures)}")
            elif all(series is not s for s, _ in matched[rule.name]):
                matched[rule.name].append((series, rule))
        if not any(series is s for found in matched.values() for s, _ in found):
            selection.rejected[series.series_uid] = reasons
    studies = index.study_uids
    if not index.series:
        selection.problems.append("the upload holds no DICOM image series")
    elif len(studies) > 1 and set(mapping) != set(roles):
        listing = {
            study: [s.series_uid for s in index.series if s.study_uid == study] for study in studies
        }
        selection.problems.append(
            f"the upload holds {len(studies)} studies (StudyInstanceUID -> series: {listing}); "
            "upload one study or map every contrast"
        )
    for role in roles:
        mapped = index.by_uid(mapping[role]) if role in mapping else None
        if mapped is not None:
            selection.choices[role] = RoleChoice(
                role, mapped, "series_map", (mapped.series_uid,), "named in series_map"
            )
            selection.candidates[role] = (mapped.series_uid,)
            continue
        found = matched[role]
        uids = tuple(s.series_uid for s, _ in found)
        selection.candidates[role] = uids
        if not found:
            selection.problems.append(
                f"no series matches the rules for {role}; series with enough slices: "
                f"{[s.series_uid for s in eligible]} (why each was rejected: POST /dicom/inspect)"
            )
            continue
        ranked = sorted(found, key=lambda pair: _tie_key(pair[0]))
        best, rule = ranked[0]
        if len(ranked) > 1 and _tie_key(ranked[1][0]) == _tie_key(best):
            tied = [s.series_uid for s, _ in ranked if _tie_key(s) == _tie_key(best)]
            selection.problems.append(
                f"{role} is ambiguous: series {tied} match equally (3D, voxel size and slice "
                "count tie)"
            )
            continue
        reason = (
            f"matched {rule.label}"
            if len(ranked) == 1
            else f"matched {rule.label}; chosen over {len(ranked) - 1} other candidate(s) by "
            "3D acquisition, then smallest voxel, then most slices"
        )
        selection.choices[role] = RoleChoice(role, best, rule.label, uids, reason)
    used: dict[str, list[str]] = {}
    for role, choice in selection.choices.items():
        used.setdefault(choice.series.series_uid, []).append(role)
    for uid, shared in used.items():
        if len(shared) > 1:
            selection.problems.append(
                f"series {uid} was chosen for {shared}: ambiguous; candidates "
                f"{ {role: list(selection.candidates[role]) for role in shared} }"
            )
    return selection
