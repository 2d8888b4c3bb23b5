"""Validating the request's ``options.analyzers`` once, against the analyzers' option models.

:func:`validate_options` turns the raw mapping into :class:`ValidatedOptions`; the host hands
each analyzer its entry as ``context.options`` (the ``options_model`` instance), so no analyzer
validates again.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ValidationError

from plugins.analyzer import Analyzer
from plugins.errors import AnalyzerOptionsError, describe_validation

AnalyzerOptions = BaseModel | Mapping[str, Any]
"""One analyzer's options: its ``options_model`` instance, or the mapping as sent."""


class ValidatedOptions(Mapping[str, AnalyzerOptions]):
    """Analyzer name -> validated options, for the analyzers the request named (immutable).

    Only :func:`validate_options` builds it; :meth:`plugins.host.AnalyzerHost.run` takes it as
    is, without validating again.
    """

    def __init__(self, options: Mapping[str, AnalyzerOptions]) -> None:
        self._options: Mapping[str, AnalyzerOptions] = MappingProxyType(dict(options))

    def __getitem__(self, name: str) -> AnalyzerOptions:
        return self._options[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._options)

    def __len__(self) -> int:
        return len(self._options)

    def __repr__(self) -> str:
        return f"ValidatedOptions({dict(self._options)!r})"


def validate_options(
    analyzers: Mapping[str, Analyzer], options: Mapping[str, Mapping[str, Any]] | None
) -> ValidatedOptions:
    """Check the request's ``options.analyzers`` against the installed analyzers.

    Args:
        analyzers: installed analyzer name -> analyzer.
        options: the request's ``options.analyzers`` (None: no options).

    Returns:
        Analyzer name -> its ``options_model`` instance (defaults filled in), or the mapping as
        sent where the analyzer declares no model.

    Raises:
        AnalyzerOptionsError: an unknown analyzer name, options that are not an object, or
            options the analyzer's model refuses (the message names the field).
    """
    options = options or {}
    unknown = sorted(set(options) - set(analyzers))
    if unknown:
        raise AnalyzerOptionsError(
            f"analyzers: unknown analyzer(s) {unknown}; installed: {sorted(analyzers)} "
            "(see GET /plugins for plugins that are blocked or failed to load)"
        )
    validated: dict[str, AnalyzerOptions] = {}
    for name, raw in options.items():
        if not isinstance(raw, Mapping):
            raise AnalyzerOptionsError(
                f"analyzers.{name}: options must be an object, got {type(raw).__name__}"
            )
        model = analyzers[name].options_model
        if model is None:
            validated[name] = MappingProxyType(dict(raw))
            continue
        try:
            validated[name] = model.model_validate(dict(raw))
        except ValidationError as exc:
            raise AnalyzerOptionsError(f"analyzers.{name}: {describe_validation(exc)}") from exc
    return ValidatedOptions(validated)


def default_options(analyzer: Analyzer) -> AnalyzerOptions:
    """The options of an analyzer the request gave none: its model's defaults, or ``{}``.

    Raises:
        pydantic.ValidationError: the model has required fields.
    """
    model = analyzer.options_model
    if model is None:
        return MappingProxyType({})
    return model.model_validate({})
