"""The analyzer host: loads plugins with pluggy, runs their analyzers isolated, lists them.

:class:`AnalyzerHost` is the facade the pipeline and the HTTP routes use; the work is done by
:mod:`plugins.loading` (discovery, allow/block, registration, declarations),
:mod:`plugins.planning` (dependency order, cycles), :mod:`plugins.options` (validating the
request's options once) and :mod:`plugins.running` (threads, time limits, artefact scoping,
outcomes). A plugin that fails to load is logged and listed in ``failed_to_load``; the host (and
so the server) still starts. See ``docs/plugins.md``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pluggy

from plugins.analyzer import ArtefactSink, Need
from plugins.errors import AnalyzerOptionsError
from plugins.loading import (
    BUILTIN_PLUGINS,
    DISTRIBUTION,
    ENTRY_POINT_GROUP,
    PluginSources,
    Registry,
    load_registry,
)
from plugins.options import ValidatedOptions, validate_options
from plugins.running import IsolatedRunner, StudyInputs
from plugins.settings import AnalyzerSettings, PluginSettings
from schemas.analyzers import AnalyzerOutcome, PluginListing

__all__ = [
    "BUILTIN_PLUGINS",
    "DISTRIBUTION",
    "ENTRY_POINT_GROUP",
    "AnalyzerHost",
    "AnalyzerOptionsError",
    "StudyInputs",
    "ValidatedOptions",
]

logger = logging.getLogger(__name__)


class AnalyzerHost:
    """Loads analyzer plugins and runs their analyzers on each study.

    Args:
        settings: allow/block lists, entry-point discovery, tracing, per-analyzer timeouts.
        analyzer_settings: the sections handed to ``register_analyzers(settings)`` (built once
            per process from the server's settings); default: the sections' defaults and no
            classifier registry.
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
        analyzer_settings: AnalyzerSettings | None = None,
        builtin_plugins: Sequence[str] = BUILTIN_PLUGINS,
        extra_plugins: Mapping[str, object] | None = None,
        entry_point_group: str = ENTRY_POINT_GROUP,
    ) -> None:
        self.settings = settings if settings is not None else PluginSettings()
        self.analyzer_settings = (
            analyzer_settings if analyzer_settings is not None else AnalyzerSettings()
        )
        self.sources = PluginSources(
            builtin_plugins=tuple(builtin_plugins),
            extra_plugins=dict(extra_plugins or {}),
            entry_point_group=entry_point_group,
        )
        self._runner = IsolatedRunner()
        self._registry = self._load()

    def reload(self) -> None:
        """Discover and register the plugins again, building every analyzer anew.

        Call it after installing a plugin or promoting a classifier: analyzers resolve their
        models when built. The new set replaces the old one at once; a study already running
        keeps the old one. Modules imported before stay imported.
        """
        importlib.invalidate_caches()
        self._registry = self._load()

    def _load(self) -> Registry:
        return load_registry(self.settings, self.analyzer_settings, self.sources)

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
        return self._registry.needs

    @property
    def failed_to_load(self) -> Mapping[str, str]:
        """Plugin name -> why it could not be imported, registered or asked for analyzers."""
        return self._registry.failed_to_load

    def listing(self) -> PluginListing:
        """Installed plugins, their versions and analyzers (``GET /plugins``)."""
        return self._registry.listing()

    def validate_options(self, options: Mapping[str, Mapping[str, Any]] | None) -> ValidatedOptions:
        """Check the request's ``options.analyzers`` against the installed analyzers, once.

        Returns:
            Analyzer name -> its ``options_model`` instance (defaults filled in), or the
            mapping as sent where the analyzer has no model; pass it to :meth:`run`.

        Raises:
            AnalyzerOptionsError: an unknown analyzer name, or options its model refuses.
        """
        return validate_options(self._registry.analyzers, options)

    def run(
        self,
        inputs: StudyInputs,
        *,
        artefacts: ArtefactSink,
        options: ValidatedOptions | Mapping[str, Mapping[str, Any]] | None = None,
        deadline: float | None = None,
    ) -> dict[str, AnalyzerOutcome]:
        """Run every analyzer on one study, dependencies first, then ``analysis_completed``.

        Args:
            inputs: the study's data; each analyzer gets only the fields it ``needs``.
            artefacts: where analyzers write their NIfTI maps.
            options: the result of :meth:`validate_options` (used as is), or the request's
                raw ``options.analyzers`` (validated here).
            deadline: the request's deadline (``time.monotonic()`` seconds): each analyzer's
                time limit is min(its own, the time left); those not started by then are
                skipped with the reason. None: the analyzers' own limits only.

        Returns:
            Analyzer name -> outcome, in the order they ran; analyzers that cannot run at all
            (dependency cycle, unknown dependency) come last.

        Raises:
            AnalyzerOptionsError: raw options that :meth:`validate_options` refuses.
        """
        registry = self._registry
        if not isinstance(options, ValidatedOptions):
            options = validate_options(registry.analyzers, options)
        return self._runner.run_study(registry, inputs, artefacts, options, deadline=deadline)
