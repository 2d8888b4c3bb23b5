"""Loading analyzer plugins with pluggy: discovery, allow/block, registration, declarations.

Plugins come from three places, registered in this order:

1. the built-in modules in :data:`BUILTIN_PLUGINS` (plugin name: the module's last dotted part);
2. plugin objects handed to the host directly (tests, embedding);
3. third-party packages exposing an entry point in the ``cerebrascan`` group (plugin name: the
   entry point's name).

A plugin that cannot be imported or registered is logged and listed in ``failed_to_load``; an
analyzer with an unusable declaration is refused and listed. :func:`load_registry` returns one
immutable :class:`Registry`; the host swaps it whole on reload.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pluggy
from pydantic import BaseModel

from plugins import hookspecs
from plugins.analyzer import ANALYZER_NAME_PATTERN, Analyzer, Need
from plugins.errors import describe_error
from plugins.planning import AnalyzerEntry, plan
from plugins.settings import AnalyzerSettings, PluginSettings
from schemas.analyzers import AnalyzerInfo, PluginInfo, PluginListing, RefusedAnalyzer

logger = logging.getLogger(__name__)
TRACE_LOGGER = "plugins.host.trace"
"""Logger of every hook call when ``plugins.trace`` is on (documented in docs/plugins.md)."""
trace_logger = logging.getLogger(TRACE_LOGGER)

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


@dataclass(frozen=True)
class PluginSources:
    """Where plugins are looked for.

    Attributes:
        builtin_plugins: modules of the built-in plugins.
        extra_plugins: plugin name -> plugin object, registered after the built-ins.
        entry_point_group: where third-party plugins are discovered.
    """

    builtin_plugins: tuple[str, ...] = BUILTIN_PLUGINS
    extra_plugins: Mapping[str, object] = field(default_factory=dict)
    entry_point_group: str = ENTRY_POINT_GROUP


@dataclass(frozen=True)
class PluginRecord:
    """One registered plugin."""

    name: str
    plugin: object
    builtin: bool
    version: str | None


@dataclass(frozen=True)
class Registry:
    """One immutable load of the plugins."""

    manager: pluggy.PluginManager
    plugins: tuple[PluginRecord, ...]
    entries: Mapping[str, AnalyzerEntry]
    order: tuple[str, ...]
    """Runnable analyzers, dependencies first."""
    failed_to_load: Mapping[str, str]
    refused: tuple[RefusedAnalyzer, ...]

    @property
    def analyzers(self) -> Mapping[str, Analyzer]:
        """Every accepted analyzer by name (runnable or not)."""
        return MappingProxyType({name: e.analyzer for name, e in self.entries.items()})

    @property
    def needs(self) -> frozenset[Need]:
        """Inputs some runnable analyzer declared."""
        needed: set[Need] = set()
        for name in self.order:
            needed |= self.entries[name].needs
        return frozenset(needed)

    def listing(self) -> PluginListing:
        """Installed plugins, their versions and analyzers (``GET /plugins``)."""
        plugins = [
            PluginInfo(
                name=record.name,
                version=record.version,
                builtin=record.builtin,
                analyzers=[
                    analyzer_info(entry)
                    for entry in self.entries.values()
                    if entry.plugin == record.name
                ],
            )
            for record in self.plugins
        ]
        return PluginListing(
            plugins=plugins,
            failed_to_load=dict(self.failed_to_load),
            refused_analyzers=list(self.refused),
        )


@dataclass
class _Loading:
    """Mutable state while a registry is built."""

    manager: pluggy.PluginManager
    settings: PluginSettings
    plugins: list[PluginRecord] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    refused: list[RefusedAnalyzer] = field(default_factory=list)

    def fail(self, name: str, reason: str) -> None:
        logger.warning("plugin %r not loaded: %s", name, reason)
        self.failed[name] = reason

    def allowed(self, name: str) -> bool:
        if name in self.settings.block:
            return False
        return self.settings.allow is None or name in self.settings.allow


def load_registry(
    settings: PluginSettings, analyzer_settings: AnalyzerSettings, sources: PluginSources
) -> Registry:
    """Import, register and ask every allowed plugin for its analyzers, then plan the run.

    Args:
        settings: allow/block lists, entry-point discovery, tracing, per-analyzer timeouts.
        analyzer_settings: handed to every ``register_analyzers`` implementation.
        sources: where plugins are looked for.

    Returns:
        The registry; failures are recorded in it, never raised.
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    if settings.trace:
        manager.add_hookcall_monitoring(_trace_before, _trace_after)
    loading = _Loading(manager, settings)
    builtin_version = _distribution_version(DISTRIBUTION)
    for module_name in sources.builtin_plugins:
        name = module_name.rsplit(".", 1)[-1]
        if not loading.allowed(name):
            logger.info("built-in plugin %r disabled by settings", name)
            continue
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # a broken built-in must not stop the server
            logger.warning("cannot import built-in plugin %s", module_name, exc_info=True)
            loading.fail(name, f"import of {module_name} failed: {describe_error(exc)}")
            continue
        _register(loading, name, module, builtin=True, version=builtin_version)
    for name, plugin in sources.extra_plugins.items():
        if loading.allowed(name):
            _register(loading, name, plugin, builtin=False, version=None)
    if settings.entry_points:
        _load_entry_points(loading, sources.entry_point_group)
    entries = _collect_analyzers(loading, analyzer_settings)
    order, entries = plan(entries)
    registry = Registry(
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


def call_per_plugin(
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


def _load_entry_points(loading: _Loading, group: str) -> None:
    """Like pluggy's ``load_setuptools_entrypoints``, but one failing import is recorded in
    ``failed_to_load`` instead of stopping the rest."""
    seen: dict[str, str] = {}
    for entry_point in importlib.metadata.entry_points(group=group):
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
        if not loading.allowed(name):
            logger.info("plugin %r disabled by settings; not imported", name)
            continue
        if loading.manager.get_plugin(name) is not None:
            loading.fail(name, "the name is already taken by another plugin")
            continue
        try:
            plugin = entry_point.load()
        except Exception as exc:  # a third-party import failure must not stop the server
            logger.warning("cannot import plugin %r (%s)", name, entry_point.value, exc_info=True)
            loading.fail(name, f"import of {entry_point.value} failed: {describe_error(exc)}")
            continue
        dist = entry_point.dist
        _register(loading, name, plugin, builtin=False, version=dist.version if dist else None)


def _register(
    loading: _Loading, name: str, plugin: object, *, builtin: bool, version: str | None
) -> None:
    manager = loading.manager
    try:
        manager.register(plugin, name=name)
    except (ValueError, pluggy.PluginValidationError) as exc:
        loading.fail(name, f"cannot register: {describe_error(exc)}")
        return
    unknown = sorted(
        caller.name
        for caller in manager.get_hookcallers(plugin) or []
        if not caller.has_spec()
        and any(impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls())
    )
    if unknown:
        manager.unregister(plugin)
        known = sorted(n for n in vars(manager.hook) if not n.startswith("_"))
        loading.fail(name, f"implements unknown hook(s) {unknown}; hooks are {known}")
        return
    loading.plugins.append(PluginRecord(name=name, plugin=plugin, builtin=builtin, version=version))


def _collect_analyzers(
    loading: _Loading, analyzer_settings: AnalyzerSettings
) -> dict[str, AnalyzerEntry]:
    entries: dict[str, AnalyzerEntry] = {}
    timeouts = loading.settings.timeouts
    for record in list(loading.plugins):
        offered: list[object] = []
        try:
            for returned in call_per_plugin(
                loading.manager, "register_analyzers", record.plugin, settings=analyzer_settings
            ):
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
            loading.fail(record.name, f"register_analyzers failed: {describe_error(exc)}")
            continue
        for offer in offered:
            if isinstance(offer, Analyzer):
                analyzer: Analyzer = offer
                problem = declaration_problem(analyzer)
                owner = entries.get(analyzer.name) if problem is None else None
                if owner is not None:
                    problem = f"name already registered by plugin {owner.plugin!r}"
            else:
                problem = f"{type(offer).__name__} is not an instance of plugins.analyzer.Analyzer"
            if problem is not None:
                name = getattr(offer, "name", None)
                shown = name if isinstance(name, str) else type(offer).__name__
                logger.warning("plugin %r: analyzer %r refused: %s", record.name, shown, problem)
                loading.refused.append(
                    RefusedAnalyzer(name=shown, plugin=record.name, reason=problem)
                )
                continue
            entries[analyzer.name] = AnalyzerEntry(
                analyzer=analyzer,
                plugin=record.name,
                timeout_s=float(timeouts.get(analyzer.name, analyzer.timeout_s)),
                needs=frozenset(Need(n) for n in analyzer.needs),
            )
    unknown = sorted(set(timeouts) - set(entries))
    if unknown:
        logger.warning("plugins.timeouts names unknown analyzer(s) %s", unknown)
    return entries


def declaration_problem(analyzer: Analyzer) -> str | None:
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


def analyzer_info(entry: AnalyzerEntry) -> AnalyzerInfo:
    """How ``GET /plugins`` describes an accepted analyzer."""
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
        trace_logger.debug("hook %s raised %s", hook_name, describe_error(exception))
        return
    result = outcome.get_result()
    count = len(result) if isinstance(result, list) else 1
    trace_logger.debug("hook %s returned %d result(s)", hook_name, count)
