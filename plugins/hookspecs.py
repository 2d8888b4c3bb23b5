"""Hook specifications of CerebraScan's plugin system (pluggy project name ``cerebrascan``).

A plugin is a module or object with functions marked ``@hookimpl`` whose names match the specs
below. Built-in analyzers are plugins too (``plugins/builtin/``); third-party plugins are found
through the ``cerebrascan`` entry-point group, for example in a plugin's ``pyproject.toml``::

    [project.entry-points.cerebrascan]
    my_plugin = "my_package.plugin"

Every hook here must be documented and exercised by a test (``tests/test_plugin_meta.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from plugins.analyzer import Analyzer, AnalyzerOutcomes
    from plugins.settings import AnalyzerSettings

PROJECT_NAME = "cerebrascan"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_analyzers(settings: AnalyzerSettings) -> list[Analyzer]:
    """Return the analyzers this plugin provides, built with their configuration.

    Called once when the analyzer host starts (and again when plugins are reloaded, e.g. after
    a classifier is promoted): build each analyzer here from its section of ``settings`` and
    resolve what it loads (models) now, not per study. An implementation may leave the
    ``settings`` argument out (pluggy passes only the arguments it names). Each item
    is an instance of a subclass of :class:`plugins.analyzer.Analyzer`; its ``name`` must be
    unique across all plugins (a duplicate is refused and logged, the first one wins). An
    invalid declaration is refused the same way; if this hook raises, the whole plugin is
    unloaded and listed in ``failed_to_load`` at ``GET /plugins``.

    Args:
        settings: the sections handed to analyzers (``classifiers``, ``nogo``,
            ``longitudinal``) and the classifier registry, built once per process.

    Returns:
        A list of analyzer instances (may be empty).
    """
    raise NotImplementedError


@hookspec
def analysis_completed(study_id: str, outcomes: AnalyzerOutcomes) -> None:
    """Observe the analyzer results of a finished study (e.g. to forward them elsewhere).

    Called once per study after every analyzer has run, with copies of the outcomes the client
    receives (changing them changes nothing). Each plugin's implementation is called on its
    own: an exception is logged, ignored, and does not stop the other plugins' calls.

    Args:
        study_id: the study's id (no patient-identifying data).
        outcomes: analyzer name -> outcome (result, version, timing, error).
    """
    raise NotImplementedError
