"""Running analyzers isolated: one daemon thread and time limit each, a scoped artefact sink,
and every failure turned into that analyzer's outcome and nothing else's."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from plugins.analyzer import (
    ARTEFACT_NAME_PATTERN,
    AnalysisContext,
    Analyzer,
    ArtefactSink,
    Need,
    PatientHistory,
    SegmentationModelInfo,
)
from plugins.errors import describe_error, describe_validation
from plugins.loading import Registry, call_per_plugin
from plugins.options import AnalyzerOptions, ValidatedOptions, default_options
from plugins.planning import AnalyzerEntry
from schemas.analyzers import AnalyzerOutcome, ArtefactLink

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyInputs:
    """Everything the pipeline has for one study; each analyzer sees only what it ``needs``."""

    study_id: str
    affine: npt.NDArray[np.float64]
    spacing_mm: tuple[float, float, float]
    modalities: tuple[str, ...] = ()
    images: npt.NDArray[np.float32] | None = None
    segmentation: npt.NDArray[np.uint8] | None = None
    volumes_ml: Mapping[str, float] | None = None
    """The pipeline's volumes of ``segmentation`` (handed on with it)."""
    probabilities: npt.NDArray[np.float16] | None = None
    tta_disagreement: npt.NDArray[np.float16] | None = None
    prior_studies: PatientHistory | None = None
    segmentation_model: SegmentationModelInfo | None = None
    """The model that made ``segmentation`` (classifiers check their calibration against it)."""


class IsolatedRunner:
    """Runs a registry's analyzers on one study at a time, each in its own daemon thread.

    Keeps the threads of timed-out analyzers (they cannot be killed) to report them. While a
    plugin has ``max_abandoned_per_plugin`` such threads still running, its analyzers are
    skipped with that reason, so a hanging plugin cannot pile up threads study after study.

    Args:
        max_abandoned_per_plugin: timed-out threads of one plugin tolerated at once.
    """

    def __init__(self, max_abandoned_per_plugin: int = 2) -> None:
        if max_abandoned_per_plugin < 1:
            raise ValueError(
                f"max_abandoned_per_plugin must be at least 1, got {max_abandoned_per_plugin}"
            )
        self.max_abandoned_per_plugin = max_abandoned_per_plugin
        self._abandoned: list[tuple[str, threading.Thread]] = []
        self._lock = threading.Lock()

    def abandoned_threads(self, plugin: str) -> int:
        """Timed-out threads of ``plugin`` still running."""
        with self._lock:
            self._abandoned = [(p, t) for p, t in self._abandoned if t.is_alive()]
            return sum(1 for p, _ in self._abandoned if p == plugin)

    def run_study(
        self,
        registry: Registry,
        inputs: StudyInputs,
        artefacts: ArtefactSink,
        options: ValidatedOptions,
        *,
        deadline: float | None = None,
    ) -> dict[str, AnalyzerOutcome]:
        """Run every runnable analyzer, dependencies first, then ``analysis_completed``.

        Args:
            registry: the loaded analyzers.
            inputs: the study's data.
            artefacts: the study's artefact sink.
            options: validated options per analyzer.
            deadline: the whole request's deadline (``time.monotonic()`` seconds): an
                analyzer's time limit is min(its own, the time left), and one not started once
                it has passed is skipped with that reason. None: own limits only.

        Returns:
            Analyzer name -> outcome, in the order they ran; analyzers that cannot run at all
            (dependency cycle, unknown dependency) come last.
        """
        outcomes: dict[str, AnalyzerOutcome] = {}
        results: dict[str, BaseModel] = {}
        owners: dict[str, str] = {}
        for name in registry.order:
            entry = registry.entries[name]
            failed = [d for d in entry.analyzer.depends_on if outcomes[d].status != "ok"]
            if failed:
                reasons = ", ".join(f"{d!r} ({outcomes[d].status})" for d in failed)
                outcomes[name] = outcome_of(entry, "skipped", 0.0, error=f"dependency {reasons}")
                logger.info("analyzer %r skipped: dependency %s", name, reasons)
                continue
            time_left = None if deadline is None else deadline - time.monotonic()
            if time_left is not None and time_left <= 0:
                error = "the request's deadline passed before it could start"
                outcomes[name] = outcome_of(entry, "skipped", 0.0, error=error)
                logger.warning("analyzer %r skipped: %s", name, error)
                continue
            outcome, result = self._run_one(
                entry, inputs, artefacts, owners, options.get(name), results, time_left
            )
            outcomes[name] = outcome
            if result is not None:
                results[name] = result
        for name, entry in registry.entries.items():
            if entry.unavailable is not None:
                outcomes[name] = outcome_of(
                    entry, entry.unavailable_status, 0.0, error=entry.unavailable
                )
        notify_completed(registry, inputs.study_id, outcomes)
        return outcomes

    def _run_one(
        self,
        entry: AnalyzerEntry,
        inputs: StudyInputs,
        sink: ArtefactSink,
        owners: dict[str, str],
        options: AnalyzerOptions | None,
        results: Mapping[str, BaseModel],
        time_left: float | None = None,
    ) -> tuple[AnalyzerOutcome, BaseModel | None]:
        analyzer = entry.analyzer
        # the request's deadline caps the analyzer's own limit
        limit_s = entry.timeout_s if time_left is None else min(entry.timeout_s, time_left)
        by_deadline = limit_s < entry.timeout_s
        if options is None:
            try:
                options = default_options(analyzer)
            except ValidationError as exc:
                error = f"options required: {describe_validation(exc)}"
                return outcome_of(entry, "error", 0.0, error=error), None
        stuck = self.abandoned_threads(entry.plugin)
        if stuck >= self.max_abandoned_per_plugin:
            error = (
                f"plugin {entry.plugin!r} has {stuck} timed-out analyzer thread(s) still "
                f"running, the most tolerated ({self.max_abandoned_per_plugin}); skipped until "
                "they end"
            )
            logger.warning("analyzer %r skipped: %s", analyzer.name, error)
            return outcome_of(entry, "skipped", 0.0, error=error), None
        scoped = ScopedSink(sink, analyzer.name, owners)
        context = build_context(analyzer, entry.needs, inputs, scoped, options, results)
        clock = time.perf_counter()
        future, thread = _call_in_thread(
            analyzer.analyze, context, name=f"analyzer-{analyzer.name}"
        )
        done, _ = wait_for_futures([future], timeout=limit_s)
        duration_ms = (time.perf_counter() - clock) * 1000
        scoped.close()
        links = scoped.links
        if not done:
            self._abandon(entry.plugin, thread)
            error = (
                f"timed out after {limit_s:.3g} s (the request's deadline; its own limit is "
                f"{entry.timeout_s:g} s)"
                if by_deadline
                else f"timed out after {entry.timeout_s:g} s"
            )
            logger.warning("analyzer %r %s", analyzer.name, error)
            return outcome_of(entry, "error", duration_ms, error=error, artefacts=links), None
        raised = future.exception()
        if raised is not None:
            logger.warning("analyzer %r raised", analyzer.name, exc_info=raised)
            error = describe_error(raised)
            return outcome_of(entry, "error", duration_ms, error=error, artefacts=links), None
        result = future.result()
        model = analyzer.result_model
        if not isinstance(result, model):
            error = f"returned {type(result).__name__}, expected an instance of {model.__name__}"
            logger.warning("analyzer %r %s", analyzer.name, error)
            return outcome_of(entry, "error", duration_ms, error=error, artefacts=links), None
        try:
            validated = model.model_validate(result.model_dump(round_trip=True, warnings=False))
            payload = validated.model_dump(mode="json")
        except (ValidationError, PydanticSerializationError, TypeError, ValueError) as exc:
            error = f"result failed validation: {describe_error(exc)}"
            logger.warning("analyzer %r %s", analyzer.name, error)
            return outcome_of(entry, "error", duration_ms, error=error, artefacts=links), None
        outcome = outcome_of(entry, "ok", duration_ms, result=payload, artefacts=links)
        logger.debug("analyzer %r finished in %.1f ms", analyzer.name, duration_ms)
        return outcome, validated

    def _abandon(self, plugin: str, thread: threading.Thread) -> None:
        with self._lock:
            self._abandoned = [(p, t) for p, t in self._abandoned if t.is_alive()]
            self._abandoned.append((plugin, thread))
            names = [t.name for _, t in self._abandoned]
        logger.warning("%d timed-out analyzer thread(s) still running: %s", len(names), names)


def build_context(
    analyzer: Analyzer,
    needs: frozenset[Need],
    inputs: StudyInputs,
    artefacts: ArtefactSink,
    options: AnalyzerOptions,
    results: Mapping[str, BaseModel],
) -> AnalysisContext:
    """The context ``analyzer`` sees: only the inputs in ``needs``, read-only, the results of
    its dependencies and its validated options."""
    return AnalysisContext(
        study_id=inputs.study_id,
        affine=_read_only(inputs.affine),
        spacing_mm=inputs.spacing_mm,
        modalities=inputs.modalities,
        artefacts=artefacts,
        images=_read_only(inputs.images) if Need.IMAGES in needs else None,
        segmentation=_read_only(inputs.segmentation) if Need.SEGMENTATION in needs else None,
        volumes_ml=(
            MappingProxyType(dict(inputs.volumes_ml))
            if Need.SEGMENTATION in needs and inputs.volumes_ml is not None
            else None
        ),
        probabilities=_read_only(inputs.probabilities) if Need.PROBABILITIES in needs else None,
        tta_disagreement=(
            _read_only(inputs.tta_disagreement) if Need.TTA_DISAGREEMENT in needs else None
        ),
        prior_studies=inputs.prior_studies if Need.PRIOR_STUDIES in needs else None,
        segmentation_model=inputs.segmentation_model,
        results=MappingProxyType({d: results[d] for d in analyzer.depends_on if d in results}),
        options=options,
    )


def notify_completed(
    registry: Registry, study_id: str, outcomes: Mapping[str, AnalyzerOutcome]
) -> None:
    """Call ``analysis_completed`` on each plugin on its own: one failure hides no other, and
    observers get copies, so they cannot change the response."""
    frozen = MappingProxyType({k: v.model_copy(deep=True) for k, v in outcomes.items()})
    for record in registry.plugins:
        try:
            for _ in call_per_plugin(
                registry.manager,
                "analysis_completed",
                record.plugin,
                study_id=study_id,
                outcomes=frozen,
            ):
                pass
        except Exception:  # observers never change the response
            logger.warning(
                "plugin %r: analysis_completed raised; ignored", record.name, exc_info=True
            )


class ScopedSink:
    """One analyzer's view of the artefact sink: names are owned by the first analyzer that
    writes them, and nothing can be written once the analyzer's time is up."""

    def __init__(self, sink: ArtefactSink, analyzer: str, owners: dict[str, str]) -> None:
        self._sink = sink
        self._analyzer = analyzer
        self._owners = owners
        self._lock = threading.Lock()
        self._closed = False
        self._links: dict[str, ArtefactLink] = {}

    def write_nifti(self, name: str, array: npt.NDArray[Any], *, description: str) -> str:
        """Write through to the study's sink (see :class:`plugins.analyzer.ArtefactSink`)."""
        if not isinstance(name, str) or not ARTEFACT_NAME_PATTERN.match(name):
            raise ValueError(f"artefact name {name!r} must match {ARTEFACT_NAME_PATTERN.pattern}")
        with self._lock:
            if self._closed:
                raise RuntimeError(
                    f"analyzer {self._analyzer!r} cannot write artefact {name!r}: its time is up"
                )
            owner = self._owners.setdefault(name, self._analyzer)
        if owner != self._analyzer:
            raise ValueError(f"artefact {name!r} was already written by analyzer {owner!r}")
        url = self._sink.write_nifti(name, array, description=description)
        with self._lock:
            if not self._closed:
                self._links[name] = ArtefactLink(name=name, url=url, description=description)
        return url

    def close(self) -> None:
        """Refuse every later write (the analyzer's time is up or it returned)."""
        with self._lock:
            self._closed = True

    @property
    def links(self) -> list[ArtefactLink]:
        """The artefacts written before :meth:`close`."""
        with self._lock:
            return list(self._links.values())


def outcome_of(
    entry: AnalyzerEntry,
    status: Literal["ok", "error", "skipped"],
    duration_ms: float,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    artefacts: list[ArtefactLink] | None = None,
) -> AnalyzerOutcome:
    """An analyzer's outcome with its name, version and plugin."""
    return AnalyzerOutcome(
        name=entry.analyzer.name,
        version=entry.analyzer.version,
        plugin=entry.plugin,
        status=status,
        duration_ms=round(duration_ms, 3),
        result=result,
        error=error,
        artefacts=artefacts or [],
    )


def _call_in_thread(
    function: Callable[[AnalysisContext], BaseModel], context: AnalysisContext, *, name: str
) -> tuple[Future[BaseModel], threading.Thread]:
    """Start ``function(context)`` in a daemon thread.

    A daemon thread (not a ThreadPoolExecutor worker) so that an analyzer that never returns
    cannot hold up the server's shutdown.
    """
    future: Future[BaseModel] = Future()

    def target() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(function(context))
        except BaseException as exc:  # noqa: BLE001 - handed to the host, as concurrent.futures does
            future.set_exception(exc)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return future, thread


def _read_only(array: npt.NDArray[Any] | None) -> Any:
    if array is None:
        return None
    view = array.view()
    view.flags.writeable = False
    return view
