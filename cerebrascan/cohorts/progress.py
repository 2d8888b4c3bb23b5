"""Progress of a running cohort: a terminal bar, JSON lines, and ``progress.json``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO


@dataclass
class Progress:
    """Counts studies as they finish and reports rate and ETA.

    Args:
        total: studies this run analyses (those not done before).
        skipped: studies the ledger already had.
        stream: where the bar or the JSON lines go.
        json_lines: one JSON object per finished study instead of a bar.
        publish: called with :meth:`snapshot` at most every ``publish_every_s``.
    """

    total: int
    skipped: int
    stream: TextIO
    json_lines: bool = False
    publish: Callable[[dict[str, Any]], None] | None = None
    publish_every_s: float = 5.0
    done: int = 0
    failed: int = 0
    started: float = field(default_factory=time.perf_counter)
    _last_publish: float = 0.0

    def snapshot(self, state: str = "running") -> dict[str, Any]:
        """Where the run stands, as a JSON-ready dict."""
        elapsed = time.perf_counter() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        remaining = self.total - self.done
        return {
            "state": state,
            "total": self.total,
            "skipped": self.skipped,
            "done": self.done,
            "failed": self.failed,
            "per_second": round(rate, 4),
            "elapsed_s": round(elapsed, 1),
            "eta_s": round(remaining / rate, 1) if rate > 0 else None,
        }

    def study_finished(self, status: str) -> None:
        """Count one study (``ok``, ``input_error`` or ``failed``) and report."""
        self.done += 1
        if status != "ok":
            self.failed += 1
        snapshot = self.snapshot()
        if self.json_lines:
            self.stream.write(json.dumps(snapshot) + "\n")
        else:
            self.stream.write("\r" + render_bar(snapshot))
        self.stream.flush()
        now = time.perf_counter()
        if self.publish is not None and (
            now - self._last_publish >= self.publish_every_s or self.done == self.total
        ):
            self._last_publish = now
            self.publish(snapshot)

    def finish(self, state: str = "finished") -> dict[str, Any]:
        """The final snapshot (ends the bar's line)."""
        snapshot = self.snapshot(state)
        if self.json_lines:
            self.stream.write(json.dumps(snapshot) + "\n")
        elif self.done:
            self.stream.write("\n")
        self.stream.flush()
        if self.publish is not None:
            self.publish(snapshot)
        return snapshot


def render_bar(snapshot: dict[str, Any], width: int = 30) -> str:
    """``[#####.....] 12/40 done, 1 failed, 0.8/s, ETA 35 s``."""
    total = max(int(snapshot["total"]), 1)
    filled = int(width * int(snapshot["done"]) / total)
    eta = snapshot["eta_s"]
    eta_text = f"{eta:.0f} s" if eta is not None else "?"
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {snapshot['done']}/{snapshot['total']} done, "
        f"{snapshot['failed']} failed, {snapshot['per_second']:.2f}/s, ETA {eta_text}"
    )
