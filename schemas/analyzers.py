"""Analyzer results as they appear in answers, and the plugin listing of ``GET /plugins``."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field

ARTEFACT_NAME_PATTERN = re.compile(r"^[a-z0-9_\-]{1,64}$")
"""Artefact names: what an analyzer may write and ``GET /studies/{id}/artefacts/{name}`` serves."""


class ArtefactLink(BaseModel):
    """A file an analyzer wrote for the study (a NIfTI map on the input grid)."""

    name: str = Field(description="Artefact name, unique within the study.")
    url: str = Field(description="Where to fetch it: GET /studies/{id}/artefacts/{name}.")
    description: str = Field(description="What the map holds, as the analyzer described it.")


class AnalyzerOutcome(BaseModel):
    """One analyzer's part of an ``/analyze`` answer."""

    name: str
    version: str
    plugin: str = Field(description="The plugin that registered the analyzer.")
    status: Literal["ok", "error", "skipped"]
    duration_ms: float
    result: dict[str, Any] | None = Field(
        default=None, description="The analyzer's result (its result_model as JSON)."
    )
    error: str | None = Field(default=None, description="Why there is no result.")
    artefacts: list[ArtefactLink] = Field(
        default_factory=list, description="Artefacts the analyzer wrote for this study."
    )


class AnalyzerInfo(BaseModel):
    """What an installed analyzer declares."""

    name: str
    version: str
    description: str | None = Field(
        default=None, description="First paragraph of the analyzer class's docstring."
    )
    needs: list[str]
    depends_on: list[str]
    timeout_s: float = Field(description="Time limit in force (settings may override it).")
    result_schema: dict[str, Any]
    options_schema: dict[str, Any] | None = Field(
        default=None,
        description="JSON schema of options.analyzers.<name>; None if it takes no options.",
    )
    unavailable: str | None = Field(
        default=None,
        description="Why the analyzer cannot run (dependency cycle, unknown dependency).",
    )


class PluginInfo(BaseModel):
    """An installed plugin and the analyzers it registers."""

    name: str
    version: str | None
    builtin: bool
    analyzers: list[AnalyzerInfo]


class RefusedAnalyzer(BaseModel):
    """An analyzer a plugin offered that the host did not accept."""

    name: str = Field(description="The analyzer's name (or its class name if it had none).")
    plugin: str
    reason: str


class PluginListing(BaseModel):
    """Answer of ``GET /plugins``."""

    plugins: list[PluginInfo]
    failed_to_load: dict[str, str] = Field(
        default_factory=dict,
        description="Plugins that could not be imported or registered, with why.",
    )
    refused_analyzers: list[RefusedAnalyzer] = Field(
        default_factory=list,
        description="Analyzers refused at start (duplicate name, invalid declaration).",
    )
