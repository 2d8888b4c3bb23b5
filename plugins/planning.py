"""Planning a run: dependency order of the accepted analyzers, and those that can never run.

An analyzer depending on an unknown analyzer, or sitting on a dependency cycle, is an error at
every request; analyzers depending on those are skipped. Everything else runs, dependencies
first, registration order breaking ties.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from plugins.analyzer import Analyzer, Need

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalyzerEntry:
    """One accepted analyzer and how the host runs it."""

    analyzer: Analyzer
    plugin: str
    """Name of the plugin that registered it."""
    timeout_s: float
    """The analyzer's ``timeout_s`` or its ``plugins.timeouts`` override."""
    needs: frozenset[Need]
    unavailable: str | None = None
    """Why the analyzer can never run (cycle, unknown dependency); None if it can."""
    unavailable_status: Literal["error", "skipped"] = "error"


def plan(
    entries: Mapping[str, AnalyzerEntry],
) -> tuple[tuple[str, ...], dict[str, AnalyzerEntry]]:
    """Order analyzers so dependencies run first (stable: registration order breaks ties).

    Args:
        entries: accepted analyzers in registration order.

    Returns:
        The run order of the runnable analyzers, and the entries with ``unavailable`` set on
        those that cannot run (an error for an unknown dependency or a cycle, skipped for
        analyzers depending on those).
    """
    problems: dict[str, tuple[Literal["error", "skipped"], str]] = {}
    for name, entry in entries.items():
        unknown = [d for d in entry.analyzer.depends_on if d not in entries]
        if unknown:
            problems[name] = (
                "error",
                f"depends on unknown analyzer(s) {unknown} (not installed, blocked, refused or "
                "failed to load)",
            )
    order: list[str] = []
    placed: set[str] = set()
    pending = [n for n in entries if n not in problems]
    progress = True
    while pending and progress:
        progress = False
        for name in pending:
            deps = entries[name].analyzer.depends_on
            broken = [d for d in deps if d in problems]
            if broken:
                problems[name] = ("skipped", f"dependency {broken[0]!r} cannot run")
            elif all(d in placed for d in deps):
                order.append(name)
                placed.add(name)
            else:
                continue
            pending.remove(name)
            progress = True
            break
    for name in pending:
        cycle = find_cycle(name, entries, set(pending))
        if cycle:
            problems[name] = ("error", "dependency cycle: " + " -> ".join(cycle))
    for name in pending:
        if name not in problems:
            blocker = next(d for d in entries[name].analyzer.depends_on if d in pending)
            problems[name] = ("skipped", f"dependency {blocker!r} cannot run")
    updated = dict(entries)
    for name, (status, reason) in problems.items():
        logger.warning("analyzer %r cannot run: %s", name, reason)
        updated[name] = dataclasses.replace(
            entries[name], unavailable=reason, unavailable_status=status
        )
    return tuple(order), updated


def find_cycle(
    start: str, entries: Mapping[str, AnalyzerEntry], within: set[str]
) -> list[str] | None:
    """A dependency path from ``start`` back to itself through ``within``, or None."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    visited: set[str] = set()
    while stack:
        node, path = stack.pop()
        for dep in entries[node].analyzer.depends_on:
            if dep == start:
                return [*path, start]
            if dep in within and dep not in visited:
                visited.add(dep)
                stack.append((dep, [*path, dep]))
    return None
