"""The analysis pipeline: a decoded :class:`Study` -> segment -> analyzers -> store.

Every transport (HTTP NIfTI uploads, gRPC tensors, a case folder, DICOM later) decodes its
input into a :class:`~cerebrascan.inputs.study.Study` in :mod:`cerebrascan.inputs` and calls
:meth:`AnalysisPipeline.run`; nothing here reads an upload.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from types import MappingProxyType

import nibabel as nib
import numpy as np
import numpy.typing as npt

from cerebrascan.classifiers.model_registry import resolve_classifier
from cerebrascan.errors import InputError
from cerebrascan.imaging.regions import volumes_ml
from cerebrascan.inputs.study import Study
from cerebrascan.observability import record_study, study_in_flight
from cerebrascan.registry import ResolvedModel
from cerebrascan.report.supplied_text import save_supplied_text
from cerebrascan.segmentation import SegmentationResult, segment_study
from cerebrascan.settings import Settings
from cerebrascan.store import PatientIdError, StudyRecord, StudyRepository
from cerebrascan.store.artefacts import (
    DICOM_SOURCE_FILE,
    RESULT_FILE,
    SEGMENTATION_FILE,
    StudyArtefacts,
    StudyArtefactSink,
    artefact_file_name,
    is_storage_full,
    storage_full_error,
)
from cerebrascan.store.models import DEFAULT_TENANT
from cerebrascan.views.display import display_copy
from plugins.analyzer import Need, PatientHistory, PriorStudy, SegmentationModelInfo
from plugins.host import BUILTIN_PLUGINS, AnalyzerHost, AnalyzerOptionsError, StudyInputs
from plugins.options import ValidatedOptions
from plugins.settings import AnalyzerSettings
from runners.engine_check import check_runner
from runners.errors import EngineCheckError
from runners.factory import build_runner
from runners.protocol import SegmentationRunner
from schemas.analysis import (
    AnalyzeOptions,
    AnalyzeResponse,
    Geometry,
    ModelInfo,
    RegionVolumes,
    research_notice_for,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunnerInfo:
    """What the answer says of the runner that segmented a study."""

    name: str
    providers: list[str]
    precision: str
    precision_note: str | None

    @classmethod
    def of(cls, runner: SegmentationRunner) -> RunnerInfo:
        return cls(
            name=runner.name,
            providers=list(runner.providers),
            precision=runner.precision,
            precision_note=runner.decision.note,
        )


@dataclass(frozen=True)
class StudyPlan:
    """A checked study's id, options and what its segmentation must keep
    (:meth:`AnalysisPipeline.plan`)."""

    model: ResolvedModel
    options: AnalyzeOptions
    analyzer_options: ValidatedOptions
    study_id: str
    patient_key: str | None
    mirror_tta: bool
    keep_probabilities: bool
    tta_disagreement: bool
    tenant: str = DEFAULT_TENANT
    """The tenant the study and its patient belong to (the API key's)."""


@dataclass(frozen=True)
class StudyAnalysis:
    """What :meth:`AnalysisPipeline.run` gives a transport: the answer and the label map."""

    response: AnalyzeResponse
    labels: npt.NDArray[np.uint8]
    """NETC=1 / SNFH=2 / ET=3 on the study's grid (the stored ``segmentation``)."""


def build_analyzer_host(
    settings: Settings, *, builtin_plugins: Sequence[str] = BUILTIN_PLUGINS
) -> AnalyzerHost:
    """The analyzer host of a process, configured from its one ``settings`` object.

    Each analyzer gets its section (``classifiers`` with the registry ``settings`` names,
    ``nogo``, ``longitudinal``) through ``register_analyzers(settings)``; classifier models
    are resolved as the host builds the analyzers, and again on :meth:`AnalyzerHost.reload`.

    Args:
        settings: the process's settings.
        builtin_plugins: modules of the built-in plugins to load (tests load a few).
    """
    sections = AnalyzerSettings(
        classifiers=settings.classifiers,
        nogo=settings.nogo,
        longitudinal=settings.longitudinal,
        resolve_classifier=functools.partial(resolve_classifier, settings),
    )
    return AnalyzerHost(
        settings.plugins, analyzer_settings=sections, builtin_plugins=builtin_plugins
    )


class AnalysisPipeline:
    """Holds the loaded model and runs one study at a time through every stage.

    Args:
        settings: server settings (runner, limits, storage, plugins).
        model: the registry version to serve.
        host: the analyzer host; default: :func:`build_analyzer_host` of ``settings``.
        records: the study store (records of studies); default: the one ``settings`` names,
            migrated to the newest schema.
        runner_factory: builds the runner of a model (the front service's remote runner);
            default: the in-process engine ``settings.runner`` names.
        with_runner: False builds no runner: only :meth:`plan` and :meth:`complete` work (a
            cohort's analysis stage, whose network runs in other processes).
    """

    def __init__(
        self,
        settings: Settings,
        model: ResolvedModel,
        host: AnalyzerHost | None = None,
        records: StudyRepository | None = None,
        runner_factory: Callable[[ResolvedModel], SegmentationRunner] | None = None,
        *,
        with_runner: bool = True,
    ) -> None:
        self.settings = settings
        self._swap_lock = threading.Lock()
        self.model = model
        # the front service passes a factory for the remote runner service (batching.remote_runner)
        self._runner_factory = runner_factory
        self._runner = self._build_runner(model) if with_runner else None
        self.artefacts = StudyArtefacts(settings.studies_dir)
        self.records = records if records is not None else StudyRepository.from_settings(settings)
        self.host = host if host is not None else build_analyzer_host(settings)

    def run(
        self,
        study: Study,
        options: AnalyzeOptions,
        *,
        serving: tuple[ResolvedModel, SegmentationRunner] | None = None,
        input_timings_ms: Mapping[str, float] | None = None,
        deadline: float | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> StudyAnalysis:
        """Segment and analyse one decoded study, store it and answer.

        The same as :meth:`plan`, :func:`~cerebrascan.segmentation.segment_study` and
        :meth:`complete` in turn (a cohort run calls them in different processes).

        Args:
            study: the decoded, checked study (:mod:`cerebrascan.inputs`).
            options: the request's options.
            serving: the model and runner the transport read with :attr:`serving` before it
                decoded, so a study is served by one model from its first byte even if
                :meth:`swap_model` runs meanwhile; default: those in service now.
            input_timings_ms: the transport's own stage times (``decode``), reported first.
            deadline: the whole request's deadline (``time.monotonic()`` seconds), handed down
                to the analyzers; default: ``bounds.request_deadline_s`` from now.
            tenant: the caller's tenant: the study is stored as its, and ``patient_id`` names
                a patient of that tenant only (its priors, its idempotent study id).

        Returns:
            The answer and the label map on the study's grid. A study of a known patient
            posted again is answered from the store (its stored labels included).

        Raises:
            InputError: the study's modalities are not the served model's (400),
                ``options.analyzers`` names an unknown analyzer or holds invalid options (400),
                or ``options.patient_id`` is refused (422; the message never repeats it).
        """
        if deadline is None:
            deadline = time.monotonic() + self.settings.bounds.request_deadline_s
        # one consistent model and runner for the whole study, even if swap_model runs meanwhile
        model, runner = serving if serving is not None else self.serving
        plan = self.plan(study, options, model, tenant=tenant)
        if isinstance(plan, StudyAnalysis):
            return plan
        segmentation = segment_study(
            study,
            runner,
            mirror_tta=plan.mirror_tta,
            keep_probabilities=plan.keep_probabilities,
            tta_disagreement=plan.tta_disagreement,
            min_component_ml=self.settings.runner.min_component_ml,
        )
        return self.complete(
            study,
            plan,
            segmentation,
            RunnerInfo.of(runner),
            input_timings_ms=input_timings_ms,
            deadline=deadline,
        )

    def plan(
        self,
        study: Study,
        options: AnalyzeOptions,
        model: ResolvedModel,
        *,
        study_id: str | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> StudyPlan | StudyAnalysis:
        """Check a study and its options against ``model`` and the analyzers; decide its id
        and what the segmentation must keep.

        Args:
            study: the decoded study.
            options: the request's options.
            model: the model that will segment it.
            study_id: the caller's id for the study (a cohort's, from its study key and the
                model version), stored once like a patient's content-derived id; default:
                content-derived for a known patient, else a new random id.

        Returns:
            The plan, or the stored analysis when this study (of a known patient, or with
            this ``study_id``) was analysed before: posting it again is idempotent.

        Raises:
            InputError: as :meth:`run`.
        """
        try:
            analyzer_options = self.host.validate_options(options.analyzers)
        except AnalyzerOptionsError as exc:
            raise InputError(str(exc), status_code=400, field="options") from exc
        try:
            patient_key = (
                self.records.patient_key(options.patient_id) if options.patient_id else None
            )
        except PatientIdError as exc:
            raise InputError(str(exc), status_code=422, field="options") from None
        if tuple(study.modalities) != tuple(model.spec.modalities):
            raise InputError(
                f"study modalities {list(study.modalities)} are not the served model's "
                f"{list(model.spec.modalities)}",
                status_code=400,
            )
        # a study of a known patient has a content-derived id: posting it again is idempotent
        stable_id = study_id is not None or patient_key is not None
        if study_id is None:
            study_id = (
                study_digest(study, patient_key, options, model, tenant=tenant)
                if patient_key is not None
                else uuid.uuid4().hex
            )
        stored = self._stored_response(study_id, tenant) if stable_id else None
        if stored is not None:
            logger.info("study %s was analysed before; returning the stored result", study_id)
            labels, _ = self.artefacts.load_labels(study_id)
            return StudyAnalysis(response=stored, labels=labels)
        mirror_tta = (
            self.settings.runner.mirror_tta if options.mirror_tta is None else options.mirror_tta
        )
        needs = self.host.needs
        return StudyPlan(
            model=model,
            options=options,
            analyzer_options=analyzer_options,
            study_id=study_id,
            patient_key=patient_key,
            mirror_tta=mirror_tta,
            keep_probabilities=Need.PROBABILITIES in needs,
            tta_disagreement=mirror_tta and Need.TTA_DISAGREEMENT in needs,
            tenant=tenant,
        )

    def complete(
        self,
        study: Study,
        plan: StudyPlan,
        segmentation: SegmentationResult,
        runner: RunnerInfo,
        *,
        input_timings_ms: Mapping[str, float] | None = None,
        deadline: float | None = None,
    ) -> StudyAnalysis:
        """Run the analyzers on a segmented study, store it and answer (after :meth:`plan`).

        Args:
            study: the study :meth:`plan` checked.
            plan: its plan.
            segmentation: the segmentation on the study's grid, with its stage timings.
            runner: the runner that segmented it, for the answer.
            input_timings_ms: the transport's own stage times (``decode``), reported first.
            deadline: the request's deadline (``time.monotonic()`` seconds) for the analyzers;
                default: ``bounds.request_deadline_s`` from now.
        """
        if deadline is None:
            deadline = time.monotonic() + self.settings.bounds.request_deadline_s
        model, study_id, patient_key = plan.model, plan.study_id, plan.patient_key
        options = plan.options
        timings: dict[str, float] = dict(input_timings_ms or {})
        timings.update(segmentation.timings_ms)
        # one measurement for the answer and every analyzer (one source of truth)
        volumes = volumes_ml(segmentation.labels, study.spacing)
        # marked until its record is saved: a write cut short (kill -9) is swept at start-up
        self.artefacts.begin_write(study_id)
        clock = time.perf_counter()
        outcomes = self.host.run(
            StudyInputs(
                study_id=study_id,
                affine=study.affine,
                spacing_mm=study.spacing,
                modalities=study.modalities,
                images=study.images,
                segmentation=segmentation.labels,
                volumes_ml=MappingProxyType(volumes),
                probabilities=segmentation.probabilities,
                tta_disagreement=segmentation.tta_disagreement,
                segmentation_model=SegmentationModelInfo(
                    model.name, model.version, onnx_md5(model.onnx_path)
                ),
                prior_studies=(
                    self._patient_history(
                        patient_key, options.study_date, study_id, model, tenant=plan.tenant
                    )
                    if Need.PRIOR_STUDIES in self.host.needs
                    else None
                ),
            ),
            artefacts=StudyArtefactSink(self.artefacts, study_id, study.affine, study.shape),
            options=plan.analyzer_options,
            deadline=deadline,
        )
        segmentation.probabilities = segmentation.tta_disagreement = None
        timings["analyzers"] = (time.perf_counter() - clock) * 1000
        response = AnalyzeResponse(
            study_id=study_id,
            created_at=datetime.now(UTC),
            model=ModelInfo(
                name=model.name,
                version=model.version,
                alias=model.alias,
                runner=runner.name,
                providers=runner.providers,
                precision=runner.precision,
                precision_note=runner.precision_note,
                mirror_tta=plan.mirror_tta,
                trained_on=model.training_data,
                min_component_ml=self.settings.runner.min_component_ml,
                removed_islands=segmentation.removed_islands,
            ),
            geometry=Geometry(
                shape=study.shape,
                spacing_mm=study.spacing,
                affine=study.affine.tolist(),
                orientation="".join(nib.aff2axcodes(study.affine)),
            ),
            volumes_ml=RegionVolumes(**volumes),
            timings_ms=timings,
            segmentation_url=f"/studies/{study_id}/segmentation",
            analyzers=outcomes,
            dicom=study.dicom_report,
            notice=research_notice_for(model.name, model.version, model.training_data)
            # a start without the registry serves the last cached good version: say so
            + (f" {model.registry_warning}" if model.registry_warning else ""),
        )
        clock = time.perf_counter()
        result_json = response.model_dump_json()
        try:
            self.artefacts.save(study_id, segmentation.labels, study.affine, result_json)
            self._save_supplied_text(study_id, study, options)
            self._save_dicom_source(study_id, study)
            if patient_key is not None:  # later visits of the patient register to this image
                self._save_registration_image(study_id, study)
            self._save_display_images(study_id, study)
            self._save_record(
                response, json.loads(result_json), patient_key, options, tenant=plan.tenant
            )
        except Exception as exc:
            if not is_storage_full(exc):
                raise
            # a full disk: nothing half-written stays (files without a record), 507
            self.artefacts.delete(study_id)
            raise storage_full_error(study_id, exc) from exc
        self.artefacts.end_write(study_id)
        timings["store"] = (time.perf_counter() - clock) * 1000
        response.timings_ms = {k: round(v, 1) for k, v in timings.items()}
        record_study(timings, outcomes)
        logger.info("study %s analysed in %s ms", study_id, response.timings_ms)
        return StudyAnalysis(response=response, labels=segmentation.labels)

    def _build_runner(self, model: ResolvedModel) -> SegmentationRunner:
        """The runner for ``model``: the factory's, or an in-process engine from settings."""
        if self._runner_factory is not None:
            return self._runner_factory(model)
        return build_runner(
            model.folder, model.spec, self.settings.runner, self.settings.engine_cache_dir
        )

    @property
    def serving(self) -> tuple[ResolvedModel, SegmentationRunner]:
        """The model and runner in service now, read together."""
        with self._swap_lock:
            return self.model, self.runner

    @property
    def runner(self) -> SegmentationRunner:
        """The runner in service now.

        Raises:
            RuntimeError: the pipeline was built ``with_runner=False``.
        """
        if self._runner is None:
            raise RuntimeError("this pipeline was built without a runner (with_runner=False)")
        return self._runner

    @contextmanager
    def serving_for_study(self) -> Iterator[tuple[ResolvedModel, SegmentationRunner]]:
        """The model and runner that serve one whole study, read once when the study starts;
        the study counts as in flight on that version (``/metrics``) until the block ends.

        A transport enters this before it decodes and passes the pair to :meth:`run` as
        ``serving``, so a promotion that lands meanwhile does not change the study's model.
        """
        model, runner = self.serving
        with study_in_flight(model.name, model.version):
            yield model, runner

    def load_checked_runner(self, model: ResolvedModel) -> SegmentationRunner:
        """Build ``model``'s runner and run the reference tile through its engine (in this
        process, or in the runner service), serving nothing yet.

        Raises:
            EngineCheckError: the engine does not build, or its reference-tile logits have the
                wrong shape or non-finite values.
        """
        try:
            runner = self._build_runner(model)
        except EngineCheckError:
            raise
        except Exception as exc:  # a file that does not load (bad protobuf, wrong opset, ...)
            raise EngineCheckError(
                f"{model.name} version {model.version} does not load: {type(exc).__name__}: {exc}"
            ) from exc
        check_runner(runner)
        return runner

    def swap_model(
        self, model: ResolvedModel, runner: SegmentationRunner | None = None
    ) -> ResolvedModel:
        """Serve ``model`` from now on; studies already running finish on the old one.

        The new runner is built and checked (:meth:`load_checked_runner`) before the swap, so
        a model that fails to load leaves the old one serving.

        Args:
            model: the version to serve.
            runner: its runner, already built and checked; default: built and checked now.

        Returns:
            The model served until now.
        """
        if runner is None:
            runner = self.load_checked_runner(model)
        with self._swap_lock:
            previous = self.model
            self.model, self._runner = model, runner
        logger.info(
            "now serving %s version %s (was %s)", model.name, model.version, previous.version
        )
        return previous

    def _stored_response(self, study_id: str, tenant: str) -> AnalyzeResponse | None:
        """The stored answer of a study ``tenant`` already analysed, or None."""
        record = self.records.get_study(study_id, tenant=tenant)
        if record is None:
            return None
        return AnalyzeResponse.model_validate(record.findings)

    def _patient_history(
        self,
        patient_key: str | None,
        study_date: date | None,
        study_id: str,
        model: ResolvedModel,
        *,
        tenant: str = DEFAULT_TENANT,
    ) -> PatientHistory:
        """The patient's studies dated before this one, for ``Need.PRIOR_STUDIES`` analyzers."""
        criteria = self.settings.longitudinal
        if patient_key is None:
            return PatientHistory(None, (), criteria, reason="the request has no patient_id")
        if study_date is None:
            return PatientHistory(
                None,
                (),
                criteria,
                reason="the request has no study_date, so earlier studies cannot be ordered",
            )
        records = self.records.prior_studies(
            patient_key,
            study_date,
            limit=criteria.max_priors,
            exclude_study_id=study_id,
            tenant=tenant,
        )
        priors = tuple(self._prior_study(record, model) for record in records)
        reason = (
            None
            if priors
            else "the patient has no study dated before this one (studies without a date, on "
            "the same day or later are not priors)"
        )
        return PatientHistory(study_date, priors, criteria, reason=reason)

    def _prior_study(self, record: StudyRecord, model: ResolvedModel) -> PriorStudy:
        volumes = record.findings.get("volumes_ml") or {}
        if record.study_date is None:  # pragma: no cover - prior_studies() filters these
            raise ValueError(f"study {record.study_id} has no date")
        return PriorStudy(
            study_id=record.study_id,
            study_date=record.study_date,
            created_at=record.created_at,
            model_name=record.model_name,
            model_version=record.model_version,
            same_model=(record.model_name, record.model_version) == (model.name, model.version),
            analyzer_versions=MappingProxyType(dict(record.analyzer_versions)),
            volumes_ml=MappingProxyType({k: float(v) for k, v in volumes.items()}),
            load_labels=functools.partial(self.artefacts.load_labels, record.study_id),
            load_reference_image=functools.partial(
                self.artefacts.load_registration_image, record.study_id
            ),
        )

    def _save_registration_image(self, study_id: str, study: Study) -> None:
        modality = self.settings.longitudinal.registration_modality
        if modality not in study.modalities:
            logger.warning("no %s image: later visits cannot register to this study", modality)
            return
        image = study.images[study.modalities.index(modality)]
        self.artefacts.save_registration_image(study_id, image, study.affine)

    def _save_display_images(self, study_id: str, study: Study) -> None:
        """Keep the display copies ``views.display_modalities`` asks for (opt-in)."""
        for contrast in self.settings.views.display_modalities:
            if contrast not in study.modalities:
                logger.warning("no %s image: no display copy of it is kept", contrast)
                continue
            image = study.images[study.modalities.index(contrast)]
            self.artefacts.save_display_image(study_id, contrast, display_copy(image), study.affine)

    def _save_dicom_source(self, study_id: str, study: Study) -> None:
        """Keep the reference series' headers (DICOM JSON, no pixels) of a DICOM-origin study
        for the DICOM outputs (SEG, SR) as ``dicom_source.json``."""
        if study.dicom_source is not None:
            folder = self.artefacts.folder(study_id)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / DICOM_SOURCE_FILE).write_text(json.dumps(list(study.dicom_source)))

    def _save_supplied_text(self, study_id: str, study: Study, options: AnalyzeOptions) -> None:
        """Keep the free text that came with the study for an LLM report writer, apart from the
        findings and only where one may run (``report.keeps_supplied_text``); never logged."""
        texts = dict(study.supplied_text)
        if options.comment:
            texts["options.comment"] = options.comment
        if texts and self.settings.report.keeps_supplied_text():
            save_supplied_text(self.artefacts.folder(study_id), texts)

    def _save_record(
        self,
        response: AnalyzeResponse,
        findings: dict[str, object],
        patient_key: str | None,
        options: AnalyzeOptions,
        *,
        tenant: str = DEFAULT_TENANT,
    ) -> StudyRecord:
        """Record the study in the store, with the locations of its artefact files."""
        folder = self.artefacts.folder(response.study_id)
        artefacts = {
            "segmentation": (folder / SEGMENTATION_FILE).as_uri(),
            "result": (folder / RESULT_FILE).as_uri(),
        }
        for outcome in response.analyzers.values():
            for link in outcome.artefacts:
                artefacts[link.name] = (folder / artefact_file_name(link.name)).as_uri()
        return self.records.save_study(
            response.study_id,
            findings=findings,
            model_name=response.model.name,
            model_version=response.model.version,
            patient_id=patient_key,
            study_date=options.study_date,
            created_at=response.created_at,
            analyzer_versions={name: o.version for name, o in response.analyzers.items()},
            artefacts=artefacts,
            tenant=tenant,
        )

    def segmentation_path(self, study_id: str) -> Path:
        """The stored label map of a study (InputError 404 if unknown)."""
        return self.artefacts.artefact(study_id, SEGMENTATION_FILE)

    def result_path(self, study_id: str) -> Path:
        """The stored JSON result of a study (InputError 404 if unknown)."""
        return self.artefacts.artefact(study_id, RESULT_FILE)


def study_digest(
    study: Study,
    patient_key: str,
    options: AnalyzeOptions,
    model: ResolvedModel,
    *,
    tenant: str = DEFAULT_TENANT,
) -> str:
    """Content-derived study id (32 hex) of a patient's study: the same images, patient,
    date and model give the same id, so a study posted twice is stored once. Another tenant's
    patient of the same id gets another study id (the default tenant's ids are unchanged)."""
    digest = hashlib.blake2b(digest_size=16)
    if tenant != DEFAULT_TENANT:
        digest.update(b"tenant\0" + tenant.encode("utf-8") + b"\0")
    date_text = options.study_date.isoformat() if options.study_date else "-"
    for part in (patient_key, date_text, model.name, model.version, ",".join(study.modalities)):
        digest.update(part.encode("utf-8") + b"\0")
    digest.update(repr(study.images.shape).encode("ascii"))
    digest.update(study.affine.astype("<f8").tobytes())
    digest.update(study.images.astype("<f4", copy=False).tobytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def _file_md5(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def onnx_md5(path: Path) -> str | None:
    """MD5 of a model's ONNX file (what classifier calibrations record), computed once per
    file version; None if the file is not there (a remote runner's front may lack it)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return _file_md5(str(path), stat.st_size, stat.st_mtime_ns)


def cohort_study_id(study_key: str, model: ResolvedModel) -> str:
    """The stored id (32 hex) of a cohort's study: the same study key and model version give
    the same id, so a cohort stored twice (``--store``) stores each study once."""
    digest = hashlib.blake2b(digest_size=16)
    for part in ("cohort", study_key, model.name, model.version):
        digest.update(part.encode("utf-8") + b"\0")
    return digest.hexdigest()
