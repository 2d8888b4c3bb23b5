"""Render the generated blocks and write them into README.md and docs/settings.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cerebrascan.docs_reference.settings_table import (
    REPO_ROOT,
    SettingRow,
    display_default,
    setting_rows,
)

GENERATED_FILES: dict[str, tuple[str, ...]] = {
    "README.md": ("routes",),
    "docs/settings.md": ("settings",),
}
"""File (relative to the repository) -> the generated blocks it holds."""

COMMAND = "python -m cerebrascan.docs_reference"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def route_table(operations: list[tuple[str, str, str]]) -> str:
    """The README route table from (method, path, summary) of the served spec."""
    lines = ["| method | route | what it answers |", "|---|---|---|"]
    for method, path, summary in sorted(operations, key=lambda op: (op[1], op[0])):
        lines.append(f"| {method} | `{path}` | {_cell(summary)} |")
    return "\n".join(lines)


def settings_reference(rows: list[SettingRow]) -> str:
    """The settings reference, one table per section (top-level settings first)."""
    sections: dict[str, list[SettingRow]] = {}
    for row in rows:
        section = row.key.split(".")[0] if "." in row.key else ""
        sections.setdefault(section, []).append(row)
    parts: list[str] = []
    for section, members in sections.items():
        title = f"`{section}`" if section else "Top level"
        parts.append(f"### {title}\n")
        parts.append("| environment | key | default | meaning |")
        parts.append("|---|---|---|---|")
        for row in members:
            names = " or ".join(f"`{name}`" for name in (row.env, *row.other_env))
            parts.append(
                f"| {names} | `{row.key}` | `{_cell(display_default(row.default))}` "
                f"| {_cell(row.description)} |"
            )
        parts.append("")
    return "\n".join(parts).rstrip()


def served_spec() -> dict[str, Any]:
    """The OpenAPI spec ``GET /docs.json`` serves (imports ``service``: reads the settings)."""
    from cerebrascan.serving.http.openapi import merged_spec
    from service import CerebraScan

    return merged_spec(CerebraScan)


def generated_blocks(spec: dict[str, Any] | None = None) -> dict[str, str]:
    """Block name -> its generated Markdown."""
    from cerebrascan.serving.http.openapi import spec_operations

    return {
        "routes": route_table(spec_operations(spec if spec is not None else served_spec())),
        "settings": settings_reference(setting_rows()),
    }


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with the block ``name`` replaced by ``content``.

    Raises:
        ValueError: the markers of ``name`` are missing or not in order.
    """
    pattern = re.compile(
        rf"(<!-- BEGIN generated:{re.escape(name)} [^>]*-->\n)(.*?)(<!-- END generated:"
        rf"{re.escape(name)} -->)",
        re.DOTALL,
    )
    if not pattern.search(text):
        raise ValueError(
            f"no '<!-- BEGIN generated:{name} ... -->' ... '<!-- END generated:{name} -->' block"
        )
    return pattern.sub(lambda match: f"{match[1]}{content}\n{match[3]}", text, count=1)


def _updated(blocks: dict[str, str], root: Path) -> dict[Path, tuple[str, str]]:
    result: dict[Path, tuple[str, str]] = {}
    for relative, names in GENERATED_FILES.items():
        path = root / relative
        old = path.read_text(encoding="utf-8")
        new = old
        for name in names:
            new = replace_block(new, name, blocks[name])
        result[path] = (old, new)
    return result


def stale_files(blocks: dict[str, str] | None = None, root: Path = REPO_ROOT) -> list[str]:
    """Files whose generated blocks differ from what the code generates now."""
    blocks = blocks if blocks is not None else generated_blocks()
    return [
        str(path.relative_to(root))
        for path, (old, new) in _updated(blocks, root).items()
        if old != new
    ]


def write_blocks(blocks: dict[str, str] | None = None, root: Path = REPO_ROOT) -> list[str]:
    """Rewrite the generated blocks; the files that changed."""
    blocks = blocks if blocks is not None else generated_blocks()
    changed: list[str] = []
    for path, (old, new) in _updated(blocks, root).items():
        if old != new:
            path.write_text(new, encoding="utf-8")
            changed.append(str(path.relative_to(root)))
    return changed
