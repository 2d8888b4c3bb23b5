"""The analyzer host: loads plugins with pluggy, runs their analyzers isolated, lists them.

Plugins come from three places, registered in this order:

1. the built-in modules in :data:`BUILTIN_PLUGINS` (plugin name: the module's last dotted part);
2. plugin objects handed to the host directly (tests, embedding);
3. third-party packages exposing an entry point in the ``cerebrascan`` group (plugin name: the
   entry point's name).

A plugin that cannot be imported or registered is logged and listed in ``failed_to_load``; the
host (and so the server) still starts. Every analyzer runs in its own daemon thread with a time
limit; whatever happens inside one analyzer becomes that analyzer's outcome and nothing else's.
See ``docs/plugins.md``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pluggy
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from cerebrascan.settings import PluginSettings
from plugins import hookspecs
from plugins.analyzer import (
    ANALYZER_NAME_PATTERN,
    ARTEFACT_NAME_PATTERN,
    AnalysisContext,
    Analyzer,
    ArtefactSink,
    Need,
    PatientHistory,
)
from schemas.analyzers import (
    AnalyzerInfo,
    AnalyzerOutcome,
    ArtefactLink,
    PluginInfo,
    PluginListing,
    RefusedAnalyzer,
)

logger = logging.getLogger(__name__)
trace_logger = logging.getLogger(f"{__name__}.trace")

BUILTIN_PLUGINS: tuple[str, ...] = (
    "plugins.builtin.volumetrics",
    "plugins.builtin.nogo",
    "plugins.builtin.hotspot",
    "plugins.builtin.quality",
    "plugins.builtin.delta",
    "plugins.builtin.classification",
    "plugins.builtin.radiogenomics",
)
"""Modules of the built-in plugins, registered first and in this order."""
ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
"""Entry-point group third-party plugins publish themselves in."""
DISTRIBUTION = "cerebrascan"
"""The distribution the built-in plugins ship in (their version is its version)."""


class AnalyzerOptionsError(ValueError):
    """The request's ``options.analyzers`` cannot be used: an unknown analyzer name or options
    that fail the analyzer's ``options_model``."""


@dataclass(frozen=True)
class StudyInputs:
    """Everything the pipeline has for one study; each analyzer sees only what it ``needs``."""

    study_id: str
    affine: npt.NDArray[np.float64]
    spacing_mm: tuple[float, float, float]
    modalities: tuple[str, ...] = ()
    images: npt.NDArray[np.float32] | None = None
    segmentation: npt.NDArray[np.uint8] | None = None
    probabilities: npt.NDArray[np.float16] | None = None
    tta_disagreement: npt.NDArray[np.float16] | None = None
    prior_studies: PatientHistory | None = None


@dataclass(frozen=True)
class _Plugin:
    name: str
    plugin: object
    builtin: bool
    version: str | None


@dataclass(frozen=True)
class _Entry:
    analyzer: Analyzer
    plugin: str
    timeout_s: float
    needs: frozenset[Need]
    unavailable: str | None = None
    """Why the analyzer can never run (cycle, unknown dependency); None if it can."""
    unavailable_status: Literal["error", "skipped"] = "error"


@dataclass(frozen=True)
class _Registry:
    """One immutable load of the plugins; :meth:`AnalyzerHost.reload` swaps it whole."""

    manager: pluggy.PluginManager
    plugins: tuple[_Plugin, ...]
    entries: Mapping[str, _Entry]
    order: tuple[str, ...]
    """Runnable analyzers, dependencies first."""
    failed_to_load: Mapping[str, str]
    refused: tuple[RefusedAnalyzer, ...]


@dataclass
class _Loading:
    """Mutable state while a registry is built."""

    manager: pluggy.PluginManager
    plugins: list[_Plugin] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    refused: list[RefusedAnalyzer] = field(default_factory=list)

    def fail(self, name: str, reason: str) -> None:
        logger.warning("plugin %r not loaded: %s", name, reason)
        self.failed[name] = reason


class AnalyzerHost:
    """Loads analyzer plugins and runs their analyzers on each study.

    Args:
        settings: allow/block lists, entry-point discovery, tracing, per-analyzer timeouts.
        builtin_plugins: modules of the built-in plugins.
        extra_plugins: plugin name -> plugin object (module, class or instance with
            ``@hookimpl`` functions), registered after the built-ins; for tests and embedding.
        entry_point_group: where third-party plugins are discovered.

    Example::

        host = AnalyzerHost(PluginSettings(block=["hotspot"]))
        outcomes = host.run(inputs, artefacts=sink, options={"volumetrics": {}})
    """

    def __init__(
        self,
        settings: PluginSettings | None = None,
        *,
        builtin_plugins: Sequence[str] = BUILTIN_PLUGINS,
        extra_plugins: Mapping[str, object] | None = None,
        entry_point_group: str = ENTRY_POINT_GROUP,
    ) -> None:
        self.settings = settings if settings is not None else PluginSettings()
        self.builtin_plugins = tuple(builtin_plugins)
        self.extra_plugins = dict(extra_plugins or {})
        self.entry_point_group = entry_point_group
        self._abandoned: list[threading.Thread] = []
        self._registry = self._load()

    # ----------------------------------------------------------------- loading

    def reload(self) -> None:
        """Discover and register the plugins again (e.g. after installing one).

        The new set replaces the old one at once; a study already running keeps the old one.
        Modules imported before stay imported.
        """
        importlib.invalidate_caches()
        self._registry = self._load()

    def _allowed(self, name: str) -> bool:
        if name in self.settings.block:
            return False
        return self.settings.allow is None or name in self.settings.allow

    def _load(self) -> _Registry:
        manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        manager.add_hookspecs(hookspecs)
        if self.settings.trace:
            manager.add_hookcall_monitoring(_trace_before, _trace_after)
        loading = _Loading(manager)
        builtin_version = _distribution_version(DISTRIBUTION)
        for module_name in self.builtin_plugins:
            name = module_name.rsplit(".", 1)[-1]
            if not self._allowed(name):
                logger.info("built-in plugin %r disabled by settings", name)
                continue
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:  # a broken built-in must not stop the server
                logger.warning("cannot import built-in plugin %s", module_name, exc_info=True)
                loading.fail(name, f"import of {module_name} failed: {_describe(exc)}")
                continue
            self._register(loading, name, module, builtin=True, version=builtin_version)
        for name, plugin in self.extra_plugins.items():
            if self._allowed(name):
                self._register(loading, name, plugin, builtin=False, version=None)
        if self.settings.entry_points:
            self._load_entry_points(loading)
        entries = self._collect_analyzers(loading)
        order, entries = _plan(entries)
        registry = _Registry(
            manager=manager,
            plugins=tuple(loading.plugins),
            entries=MappingProxyType(entries),
            order=order,
            failed_to_load=MappingProxyType(dict(loading.failed)),
            refused=tuple(loading.refused),
        )
        logger.info(
            "analyzer host: plugins %s, analyzers %s%s",
            [p.name for p in registry.plugins],
            list(registry.order),
            f", failed {dict(registry.failed_to_load)}" if registry.failed_to_load else "",
        )
        return registry

    def _load_entry_points(self, loading: _Loading) -> None:
        """Like pluggy's ``load_setuptools_entrypoints``, but one failing import is recorded in
        ``failed_to_load`` instead of stopping the rest."""
        seen: dict[str, str] = {}
        for entry_point in importlib.metadata.entry_points(group=self.entry_point_group):
            name = entry_point.name
            if name in seen:
                if seen[name] != entry_point.value:
                    loading.fail(
                        name,
                        f"entry point {entry_point.value!r} ignored: the name is already taken "
                        f"by {seen[name]!r}",
                    )
                continue
            seen[name] = entry_point.value
            if not self._allowed(name):
                logger.info("plugin %r disabled by settings; not imported", name)
                continue
            if loading.manager.get_plugin(name) is not None:
                loading.fail(name, "the name is already taken by another plugin")
                continue
            try:
                plugin = entry_point.load()
            except Exception as exc:  # a third-party import failure must not stop the server
                logger.warning(
                    "cannot import plugin %r (%s)", name, entry_point.value, exc_info=True
                )
                loading.fail(name, f"import of {entry_point.value} failed: {_describe(exc)}")
                continue
            dist = entry_point.dist
            self._register(
                loading, name, plugin, builtin=False, version=dist.version if dist else None
            )

    def _register(
        self, loading: _Loading, name: str, plugin: object, *, builtin: bool, version: str | None
    ) -> None:
        manager = loading.manager
        try:
            manager.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            loading.fail(name, f"cannot register: {_describe(exc)}")
            return
        unknown = sorted(
            caller.name
            for caller in manager.get_hookcallers(plugin) or []
            if not caller.has_spec()
            and any(
                impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls()
            )
        )
        if unknown:
            manager.unregister(plugin)
            known = sorted(n for n in vars(manager.hook) if not n.startswith("_"))
            loading.fail(name, f"implements unknown hook(s) {unknown}; hooks are {known}")
            return
        loading.plugins.append(_Plugin(name=name, plugin=plugin, builtin=builtin, version=version))

    def _collect_analyzers(self, loading: _Loading) -> dict[str, _Entry]:
        entries: dict[str, _Entry] = {}
        for record in list(loading.plugins):
            offered: list[object] = []
            try:
                for returned in _per_plugin(loading.manager, "register_analyzers", record.plugin):
                    if not isinstance(returned, list | tuple):
                        raise TypeError(
                            f"register_analyzers returned {type(returned).__name__}, "
                            "expected a list of Analyzer instances"
                        )
                    offered.extend(returned)
            except Exception as exc:  # one plugin's failure must not stop the others
                logger.warning("plugin %r: register_analyzers failed", record.name, exc_info=True)
                loading.manager.unregister(record.plugin)
                loading.plugins.remove(record)
                loading.fail(record.name, f"register_analyzers failed: {_describe(exc)}")
                continue
            for offer in offered:
                if isinstance(offer, Analyzer):
                    analyzer: Analyzer = offer
                    problem = _declaration_problem(analyzer)
                    owner = entries.get(analyzer.name) if problem is None else None
                    if owner is not None:
                        problem = f"name already registered by plugin {owner.plugin!r}"
                else:
                    problem = (
                        f"{type(offer).__name__} is not an instance of plugins.analyzer.Analyzer"
                    )
                if problem is not None:
                    name = getattr(offer, "name", None)
                    shown = name if isinstance(name, str) else type(offer).__name__
                    logger.warning(
                        "plugin %r: analyzer %r refused: %s", record.name, shown, problem
                    )
                    loading.refused.append(
                        RefusedAnalyzer(name=shown, plugin=record.name, reason=problem)
                    )
                    continue
                entries[analyzer.name] = _Entry(
                    analyzer=analyzer,
                    plugin=record.name,
                    timeout_s=float(self.settings.timeouts.get(analyzer.name, analyzer.timeout_s)),
                    needs=frozenset(Need(n) for n in analyzer.needs),
                )
        unknown = sorted(set(self.settings.timeouts) - set(entries))
        if unknown:
            logger.warning("plugins.timeouts names unknown analyzer(s) %s", unknown)
        return entries

    # ------------------------------------------------------------ introspection

    @property
    def plugin_manager(self) -> pluggy.PluginManager:
        """The pluggy manager of the current load (hooks are called through it)."""
        return self._registry.manager

    @property
    def analyzer_names(self) -> tuple[str, ...]:
        """Every accepted analyzer, runnable ones first in run order."""
        registry = self._registry
        return registry.order + tuple(n for n in registry.entries if n not in registry.order)

    @property
    def needs(self) -> frozenset[Need]:
        """Inputs some runnable analyzer declared (the pipeline computes only these)."""
        registry = self._registry
        needed: set[Need] = set()
        for name in registry.order:
            needed |= registry.entries[name].needs
        return frozenset(needed)

    @property
    def failed_to_load(self) -> Mapping[str, str]:
        """Plugin name -> why it could not be imported, registered or asked for analyzers."""
        return self._registry.failed_to_load

    def listing(self) -> PluginListing:
        """Installed plugins, their versions and analyzers (``GET /plugins``)."""
        registry = self._registry
        plugins = [
            PluginInfo(
                name=record.name,
                version=record.version,
                builtin=record.builtin,
                analyzers=[
                    _analyzer_info(entry)
                    for entry in registry.entries.values()
                    if entry.plugin == record.name
                ],
            )
            for record in registry.plugins
        ]
        return PluginListing(
            plugins=plugins,
            failed_to_load=dict(registry.failed_to_load),
            refused_analyzers=list(registry.refused),
        )

    # ------------------------------------------------------------------ running

    def validate_options(
        self, options: Mapping[str, Mapping[str, Any]] | None
    ) -> dict[str, dict[str, Any]]:
        """Check the request's ``options.analyzers`` against the installed analyzers.

        Returns:
            Analyzer name -> options, validated (defaults filled in) where the analyzer has an
            ``options_model``.

        Raises:
            AnalyzerOptionsError: an unknown analyzer name, or options its model refuses.
        """
        entries = self._registry.entries
        options = options or {}
        unknown = sorted(set(options) - set(entries))
        if unknown:
            raise AnalyzerOptionsError(
                f"analyzers: unknown analyzer(s) {unknown}; installed: {sorted(entries)} "
                "(see GET /plugins for plugins that are blocked or failed to load)"
            )
        validated: dict[str, dict[str, Any]] = {}
        for name, raw in options.items():
            model = entries[name].analyzer.options_model
            if not isinstance(raw, Mapping):
                raise AnalyzerOptionsError(
                    f"analyzers.{name}: options must be an object, got {type(raw).__name__}"
                )
            if model is None:
                validated[name] = dict(raw)
                continue
            try:
                validated[name] = model.model_validate(dict(raw)).model_dump()
            except ValidationError as exc:
                raise AnalyzerOptionsError(
                    f"analyzers.{name}: {_describe_validation(exc)}"
                ) from exc
        return validated

    def run(
        self,
        inputs: StudyInputs,
        *,
        artefacts: ArtefactSink,
        options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> dict[str, AnalyzerOutcome]:
        """Run every analyzer on one study, dependencies first, then ``analysis_completed``.

        Args:
            inputs: the study's data; each analyzer gets only the fields it ``needs``.
            artefacts: where analyzers write their NIfTI maps.
            options: the request's ``options.analyzers``.

        Returns:
            Analyzer name -> outcome, in the order they ran; analyzers that cannot run at all
            (dependency cycle, unknown dependency) come last.

        Raises:
            AnalyzerOptionsError: see :meth:`validate_options`.
        """
        registry = self._registry
        validated = self.validate_options(options)
        outcomes: dict[str, AnalyzerOutcome] = {}
        results: dict[str, BaseModel] = {}
        owners: dict[str, str] = {}
        for name in registry.order:
            entry = registry.entries[name]
            failed = [d for d in entry.analyzer.depends_on if outcomes[d].status != "ok"]
            if failed:
                reasons = ", ".join(f"{d!r} ({outcomes[d].status})" for d in failed)
                outcomes[name] = _outcome(entry, "skipped", 0.0, error=f"dependency {reasons}")
                logger.info("analyzer %r skipped: dependency %s", name, reasons)
                continue
            outcome, result = self._run_one(
                entry, inputs, artefacts, owners, validated.get(name), results
            )
            outcomes[name] = outcome
            if result is not None:
                results[name] = result
        for name, entry in registry.entries.items():
            if entry.unavailable is not None:
                outcomes[name] = _outcome(
                    entry, entry.unavailable_status, 0.0, error=entry.unavailable
                )
        self._notify_completed(registry, inputs.study_id, outcomes)
        return outcomes

    def _run_one(
        self,
        entry: _Entry,
        inputs: StudyInputs,
        sink: ArtefactSink,
        owners: dict[str, str],
        options: dict[str, Any] | None,
        results: Mapping[str, BaseModel],
    ) -> tuple[AnalyzerOutcome, BaseModel | None]:
        analyzer = entry.analyzer
        if options is None:
            options = {}
            if analyzer.options_model is not None:
                try:
                    options = analyzer.options_model.model_validate({}).model_dump()
                except ValidationError as exc:
                    error = f"options required: {_describe_validation(exc)}"
                    return _outcome(entry, "error", 0.0, error=error), None
        scoped = _ScopedSink(sink, analyzer.name, owners)
        needs = entry.needs
        context = AnalysisContext(
            study_id=inputs.study_id,
            affine=_read_only(inputs.affine),
            spacing_mm=inputs.spacing_mm,
            modalities=inputs.modalities,
            artefacts=scoped,
            images=_read_only(inputs.images) if Need.IMAGES in needs else None,
            segmentation=_read_only(inputs.segmentation) if Need.SEGMENTATION in needs else None,
            probabilities=(
                _read_only(inputs.probabilities) if Need.PROBABILITIES in needs else None
            ),
            tta_disagreement=(
                _read_only(inputs.tta_disagreement) if Need.TTA_DISAGREEMENT in needs else None
            ),
            prior_studies=inputs.prior_studies if Need.PRIOR_STUDIES in needs else None,
            results=MappingProxyType({d: results[d] for d in analyzer.depends_on}),
            options=MappingProxyType(options),
        )
        clock = time.perf_counter()
        future, thread = _call_in_thread(
            analyzer.analyze, context, name=f"analyzer-{analyzer.name}"
        )
        done, _ = wait_for_futures([future], timeout=entry.timeout_s)
        duration_ms = (time.perf_counter() - clock) * 1000
        scoped.close()
        links = scoped.links
        if not done:
            self._abandon(thread)
            error = f"timed out after {entry.timeout_s:g} s"
            logger.warning("analyzer %r %s", analyzer.name, error)
            return _outcome(entry, "error", duration_ms, error=error, artefacts=links), None
        raised = future.exception()
        if raised is not None:
            logger.warning("analyzer %r raised", analyzer.name, exc_info=raised)
            error = _describe(raised)
            return _outcome(entry, "error", duration_ms, error=error, artefacts=links), None
        result = future.result()
        model = analyzer.result_model
        if not isinstance(result, model):
            error = f"returned {type(result).__name__}, expected an instance of {model.__name__}"
            logger.warning("analyzer %r %s", analyzer.name, error)
            return _outcome(entry, "error", duration_ms, error=error, artefacts=links), None
        try:
            validated = model.model_validate(result.model_dump(round_trip=True, warnings=False))
            payload = validated.model_dump(mode="json")
        except (ValidationError, PydanticSerializationError, TypeError, ValueError) as exc:
            error = f"result failed validation: {_describe(exc)}"
            logger.warning("analyzer %r %s", analyzer.name, error)
            return _outcome(entry, "error", duration_ms, error=error, artefacts=links), None
        outcome = _outcome(entry, "ok", duration_ms, result=payload, artefacts=links)
        logger.debug("analyzer %r finished in %.1f ms", analyzer.name, duration_ms)
        return outcome, validated

    def _abandon(self, thread: threading.Thread) -> None:
        self._abandoned = [t for t in self._abandoned if t.is_alive()]
        self._abandoned.append(thread)
        logger.warning(
            "%d timed-out analyzer thread(s) still running: %s",
            len(self._abandoned),
            [t.name for t in self._abandoned],
        )

    def _notify_completed(
        self, registry: _Registry, study_id: str, outcomes: Mapping[str, AnalyzerOutcome]
    ) -> None:
        """Call ``analysis_completed`` on each plugin on its own: one failure hides no other,
        and observers get copies, so they cannot change the response."""
        frozen = MappingProxyType({k: v.model_copy(deep=True) for k, v in outcomes.items()})
        for record in registry.plugins:
            try:
                for _ in _per_plugin(
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


# ---------------------------------------------------------------------- helpers


class _ScopedSink:
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
        with self._lock:
            self._closed = True

    @property
    def links(self) -> list[ArtefactLink]:
        with self._lock:
            return list(self._links.values())


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


def _per_plugin(
    manager: pluggy.PluginManager, hook_name: str, plugin: object, **kwargs: Any
) -> Iterator[Any]:
    """Call ``hook_name`` on ``plugin``'s implementations only (through pluggy, so tracing
    sees it); yields nothing if the plugin does not implement it."""
    caller = getattr(manager.hook, hook_name)
    if not any(impl.plugin is plugin for impl in caller.get_hookimpls()):
        return
    others = [p for p in manager.get_plugins() if p is not plugin]
    subset = manager.subset_hook_caller(hook_name, remove_plugins=others)
    yield from subset(**kwargs)


def _plan(entries: dict[str, _Entry]) -> tuple[tuple[str, ...], dict[str, _Entry]]:
    """Order analyzers so dependencies run first (stable: registration order breaks ties).

    Analyzers depending on an unknown analyzer or sitting on a dependency cycle get an error;
    analyzers depending on those are skipped. Returns the run order and the updated entries.
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
        cycle = _find_cycle(name, entries, set(pending))
        if cycle:
            problems[name] = ("error", "dependency cycle: " + " -> ".join(cycle))
    for name in pending:
        if name not in problems:
            blocker = next(d for d in entries[name].analyzer.depends_on if d in pending)
            problems[name] = ("skipped", f"dependency {blocker!r} cannot run")
    updated = dict(entries)
    for name, (status, reason) in problems.items():
        logger.warning("analyzer %r cannot run: %s", name, reason)
        old = entries[name]
        updated[name] = _Entry(
            analyzer=old.analyzer,
            plugin=old.plugin,
            timeout_s=old.timeout_s,
            needs=old.needs,
            unavailable=reason,
            unavailable_status=status,
        )
    return tuple(order), updated


def _find_cycle(start: str, entries: Mapping[str, _Entry], within: set[str]) -> list[str] | None:
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


def _declaration_problem(analyzer: Analyzer) -> str | None:
    """Why an analyzer's declaration is unusable, or None."""
    name = getattr(analyzer, "name", None)
    if not isinstance(name, str) or not ANALYZER_NAME_PATTERN.match(name):
        return f"name {name!r} must match {ANALYZER_NAME_PATTERN.pattern}"
    version = getattr(analyzer, "version", None)
    if not isinstance(version, str) or not version:
        return f"version must be a non-empty string, got {version!r}"
    model = getattr(analyzer, "result_model", None)
    if not (inspect.isclass(model) and issubclass(model, BaseModel)):
        return f"result_model must be a pydantic model class, got {model!r}"
    options_model = analyzer.options_model
    if options_model is not None and not (
        inspect.isclass(options_model) and issubclass(options_model, BaseModel)
    ):
        return f"options_model must be a pydantic model class or None, got {options_model!r}"
    try:
        frozenset(Need(n) for n in analyzer.needs)
    except (ValueError, TypeError):
        return f"needs {analyzer.needs!r} must hold only {[n.value for n in Need]}"
    deps = analyzer.depends_on
    if isinstance(deps, str) or not all(isinstance(d, str) for d in deps):
        return f"depends_on must be a tuple of analyzer names, got {deps!r}"
    if name in deps:
        return "depends_on names the analyzer itself"
    timeout = analyzer.timeout_s
    if not isinstance(timeout, int | float) or not math.isfinite(timeout) or timeout <= 0:
        return f"timeout_s must be a positive number of seconds, got {timeout!r}"
    return None


def _analyzer_info(entry: _Entry) -> AnalyzerInfo:
    analyzer = entry.analyzer
    doc = type(analyzer).__doc__
    description = inspect.cleandoc(doc).split("\n\n", 1)[0].replace("\n", " ") if doc else None
    options_model = analyzer.options_model
    return AnalyzerInfo(
        name=analyzer.name,
        version=analyzer.version,
        description=description,
        needs=sorted(n.value for n in entry.needs),
        depends_on=list(analyzer.depends_on),
        timeout_s=entry.timeout_s,
        result_schema=analyzer.result_model.model_json_schema(),
        options_schema=options_model.model_json_schema() if options_model else None,
        unavailable=entry.unavailable,
    )


def _outcome(
    entry: _Entry,
    status: Literal["ok", "error", "skipped"],
    duration_ms: float,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    artefacts: list[ArtefactLink] | None = None,
) -> AnalyzerOutcome:
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


def _read_only(array: npt.NDArray[Any] | None) -> Any:
    if array is None:
        return None
    view = array.view()
    view.flags.writeable = False
    return view


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _describe_validation(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or '(root)'}: {error['msg']}"
        for error in exc.errors()
    )


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _trace_before(
    hook_name: str, hook_impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, object]
) -> None:
    trace_logger.debug(
        "hook %s -> %s (arguments %s)",
        hook_name,
        [impl.plugin_name for impl in hook_impls],
        sorted(kwargs),
    )


def _trace_after(
    outcome: pluggy.Result[object],
    hook_name: str,
    hook_impls: Sequence[pluggy.HookImpl],
    kwargs: Mapping[str, object],
) -> None:
    exception = outcome.exception
    if exception is not None:
        trace_logger.debug("hook %s raised %s", hook_name, _describe(exception))
        return
    result = outcome.get_result()
    count = len(result) if isinstance(result, list) else 1
    trace_logger.debug("hook %s returned %d result(s)", hook_name, count)
