"""The analyzer contract: what an analyzer declares, what it is given, what it returns.

An analyzer is a class with a ``name``, a ``version``, the inputs it ``needs``, the other
analyzers it ``depends_on``, a pydantic ``result_model`` and optionally an ``options_model``. The
host gives it an :class:`AnalysisContext` holding only what it declared, and expects an instance
of ``result_model`` back. Analyzers do maths; artefacts (NIfTI maps) are written through
``context.artefacts``, never by opening files themselves.
"""

from __future__ import annotations

import enum
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from schemas.analyzers import ARTEFACT_NAME_PATTERN as ARTEFACT_NAME_PATTERN
from schemas.analyzers import AnalyzerOutcome

if TYPE_CHECKING:
    from cerebrascan.longitudinal.settings import LongitudinalSettings

AnalyzerOutcomes = Mapping[str, AnalyzerOutcome]
OptionsT = TypeVar("OptionsT", bound=BaseModel)

ANALYZER_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
"""Analyzer names: lowercase letter first, then lowercase letters, digits, underscores."""


class Need(enum.StrEnum):
    """Inputs an analyzer may ask for; the host provides only those declared."""

    IMAGES = "images"
    """The four input modalities, ``(4, x, y, z)`` float32, on the input grid."""
    SEGMENTATION = "segmentation"
    """BraTS labels ``(x, y, z)`` uint8 on the input grid."""
    PROBABILITIES = "probabilities"
    """Class probabilities ``(4, x, y, z)`` float16 (background, NETC, SNFH, ET), input grid."""
    TTA_DISAGREEMENT = "tta_disagreement"
    """Per-voxel disagreement between mirror-TTA passes, ``(x, y, z)`` float16, or None when
    the runner ran without TTA."""
    PRIOR_STUDIES = "prior_studies"
    """The same patient's earlier studies (longitudinal analyzers): a :class:`PatientHistory`."""


class ArtefactSink(Protocol):
    """Where an analyzer writes its artefacts; returns the URL a client fetches it from."""

    def write_nifti(self, name: str, array: npt.NDArray[Any], *, description: str) -> str:
        """Save ``array`` on the study's grid as ``<name>.nii.gz``; return its URL.

        Args:
            name: matches :data:`ARTEFACT_NAME_PATTERN`, unique within the study (the first
                analyzer to write a name owns it) and not ``segmentation``.
            array: ``(x, y, z)`` or ``(x, y, z, n)`` on the input grid; bool is stored as uint8,
                float16 and float64 as float32, int64 as int32.
            description: one line saying what the map holds (kept in the NIfTI header and
                listed with the analyzer's outcome).

        Raises:
            ValueError: a bad name, a name already written, or an array not on the grid.
            RuntimeError: the analyzer's time is up (a timed-out analyzer cannot write).
        """
        ...


@dataclass(frozen=True)
class PriorStudy:
    """One earlier study of the same patient, read-only (``Need.PRIOR_STUDIES``).

    The metadata come from the study store; the arrays are read from the study's artefact
    folder only when a loader is called (the loaders do the I/O, the analyzer the maths).
    """

    study_id: str
    study_date: date
    created_at: datetime
    model_name: str
    model_version: str
    same_model: bool
    """Whether the same model name and version segmented this study and the current one."""
    analyzer_versions: Mapping[str, str]
    volumes_ml: Mapping[str, float]
    """Stored volumes (mL) per region: NETC, SNFH, ET, TC, WT."""
    load_labels: Callable[[], tuple[npt.NDArray[np.uint8], npt.NDArray[np.float64]]]
    """Returns the stored label map and its 4x4 voxel-to-RAS affine."""
    load_reference_image: Callable[
        [], tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]] | None
    ]
    """Returns the stored registration image (``longitudinal.registration_modality``,
    intensity-scaled) and its affine, or None if the study has none."""


@dataclass(frozen=True)
class PatientHistory:
    """What ``context.prior_studies`` holds: the current study's date and the patient's
    earlier studies, oldest first.

    Earlier means a ``study_date`` strictly before the current one; studies without a date,
    on the same day or later are left out. ``reason`` says why ``priors`` is empty.
    """

    study_date: date | None
    priors: tuple[PriorStudy, ...]
    criteria: LongitudinalSettings
    """Response thresholds and registration settings (``Settings.longitudinal``)."""
    reason: str | None = None


@dataclass(frozen=True)
class SegmentationModelInfo:
    """The segmentation model that made a study's labels: registry name, version and the MD5 of
    its ONNX file (what a classifier's calibration records, ``spec.json`` ``segmentation_model``).
    """

    name: str
    version: str
    onnx_md5: str | None = None


@dataclass(frozen=True)
class AnalysisContext:
    """Everything an analyzer may read. Fields it did not declare in ``needs`` are None.

    Arrays are read-only views shared with the other analyzers: copy before changing them.
    ``prior_studies`` is the patient's history (:class:`PatientHistory`).
    """

    study_id: str
    affine: npt.NDArray[np.float64]
    """4x4 voxel-to-scanner-RAS (mm) matrix of the input grid."""
    spacing_mm: tuple[float, float, float]
    modalities: tuple[str, ...]
    artefacts: ArtefactSink
    images: npt.NDArray[np.float32] | None = None
    segmentation: npt.NDArray[np.uint8] | None = None
    volumes_ml: Mapping[str, float] | None = None
    """Volume (mL) of each label and region of ``segmentation`` (NETC, SNFH, ET, TC, WT): the
    pipeline's figures, the answer's ``volumes_ml``, so analyzers reuse them instead of
    measuring again. Given with ``segmentation``; None when the caller computed none."""
    probabilities: npt.NDArray[np.float16] | None = None
    tta_disagreement: npt.NDArray[np.float16] | None = None
    prior_studies: PatientHistory | None = None
    segmentation_model: SegmentationModelInfo | None = None
    """The model that made ``segmentation`` (None when the caller did not say)."""
    results: Mapping[str, BaseModel] = field(default_factory=dict)
    """Results of the analyzers named in ``depends_on`` (only those that succeeded)."""
    options: BaseModel | Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """This analyzer's options from the request (``options.analyzers.<name>``): the instance of
    its ``options_model`` (validated once by the host, defaults filled in; read it with
    :meth:`options_as`), or the mapping as sent when it declares no model."""

    def options_as(self, model: type[OptionsT]) -> OptionsT:
        """``options`` as the validated ``model`` instance the host put there.

        Args:
            model: the analyzer's ``options_model``.

        Raises:
            TypeError: the context holds something else, e.g. a context built by hand with raw
                options (build it with :func:`plugins.testing.analysis_context`, which
                validates them as the host does).
        """
        if isinstance(self.options, model):
            return self.options
        raise TypeError(
            f"options of study {self.study_id} are a {type(self.options).__name__}, expected "
            f"a validated {model.__name__} (the host validates options once; outside the host "
            "use plugins.testing.validated_options)"
        )


class Analyzer(ABC):
    """Base class of every analyzer (built-in or third-party)."""

    name: ClassVar[str]
    """Unique identifier matching :data:`ANALYZER_NAME_PATTERN`; the key of the result in
    ``/analyze`` answers and of the analyzer's options."""
    version: ClassVar[str]
    """Version of the analyzer's method; echoed with every result."""
    result_model: ClassVar[type[BaseModel]]
    """Pydantic model of the result; its JSON schema is published at ``GET /plugins``."""
    options_model: ClassVar[type[BaseModel] | None] = None
    """Pydantic model of ``options.analyzers.<name>``. When set, the host validates the request's
    options against it once, before segmentation starts (invalid options: a 400 naming the
    field), hands the instance over as ``context.options`` and publishes its JSON schema at
    ``GET /plugins``; when None, options reach the analyzer as sent."""
    needs: ClassVar[frozenset[Need]] = frozenset()
    """Inputs to provide; every other input field of the context is None."""
    depends_on: ClassVar[tuple[str, ...]] = ()
    """Analyzers that must run first; their results arrive in ``context.results``. If one of
    them fails or is skipped, this analyzer is skipped."""
    timeout_s: ClassVar[float] = 30.0
    """Wall time after which the host records a timeout error and moves on (settings may
    override it per analyzer: ``plugins.timeouts``)."""

    @abstractmethod
    def analyze(self, context: AnalysisContext) -> BaseModel:
        """Compute the result for one study.

        Raises:
            Any exception: the host turns it into an error entry for this analyzer only.
        """
