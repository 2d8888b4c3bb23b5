"""Prometheus metrics of the analysis pipeline, exposed by BentoML at ``GET /metrics``.

Per-stage latency (decode, preprocess, inference, postprocess, analyzers, store), per-analyzer
latency and error counts, the model version being served and the studies in flight per version.
Labels never carry study or patient identifiers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import bentoml

from schemas.analyzers import AnalyzerOutcome

LATENCY_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0)


@lru_cache(maxsize=1)
def _metrics() -> dict[str, Any]:
    # Created lazily, once per process: BentoML sets up its Prometheus registry at start-up.
    return {
        "stage": bentoml.metrics.Histogram(
            name="cerebrascan_stage_duration_seconds",
            documentation="Wall time of one pipeline stage for one study.",
            labelnames=["stage"],
            buckets=LATENCY_BUCKETS_S,
        ),
        "analyzer": bentoml.metrics.Histogram(
            name="cerebrascan_analyzer_duration_seconds",
            documentation="Wall time of one analyzer for one study.",
            labelnames=["analyzer"],
            buckets=LATENCY_BUCKETS_S,
        ),
        "analyzer_errors": bentoml.metrics.Counter(
            name="cerebrascan_analyzer_errors_total",
            documentation="Analyzer runs that ended in an error or were skipped.",
            labelnames=["analyzer", "status"],
        ),
        "in_flight": bentoml.metrics.Gauge(
            name="cerebrascan_studies_in_flight",
            documentation="Studies being analysed now, by the model version serving each.",
            labelnames=["name", "version"],
            multiprocess_mode="livesum",
        ),
        "model": bentoml.metrics.Gauge(
            name="cerebrascan_serving_model_info",
            documentation="1 for the registry model version being served.",
            labelnames=["name", "version", "alias"],
        ),
    }


def record_serving_model(name: str, version: str, alias: str) -> None:
    """Publish which registry version is being served (a promoted-away version drops to 0)."""
    gauge = _metrics()["model"]
    for labels in list(_SERVED):
        gauge.labels(**labels).set(0)
    _SERVED.clear()
    gauge.labels(name=name, version=version, alias=alias).set(1)
    _SERVED.append({"name": name, "version": version, "alias": alias})


_SERVED: list[dict[str, str]] = []
"""Label sets of the serving-model gauge set to 1 by this process."""


@contextmanager
def study_in_flight(name: str, version: str) -> Iterator[None]:
    """Count one study as in flight on model ``name`` version ``version`` while the block runs
    (an operator sees when a promoted-away version has finished its last study)."""
    gauge = _metrics()["in_flight"].labels(name=name, version=version)
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


def record_study(timings_ms: Mapping[str, float], outcomes: Mapping[str, AnalyzerOutcome]) -> None:
    """Observe one study's stage timings and analyzer outcomes."""
    metrics = _metrics()
    for stage, milliseconds in timings_ms.items():
        metrics["stage"].labels(stage=stage).observe(milliseconds / 1000.0)
    for name, outcome in outcomes.items():
        metrics["analyzer"].labels(analyzer=name).observe(outcome.duration_ms / 1000.0)
        if outcome.status != "ok":
            metrics["analyzer_errors"].labels(analyzer=name, status=outcome.status).inc()
