"""CerebraScan's BentoML service: ``POST /analyze``, the stored-study routes and ``/plugins``.

Start with ``make serve`` (or ``bentoml serve service:CerebraScan``). Settings come from the
environment and ``CEREBRASCAN_CONFIG`` (see :mod:`cerebrascan.settings`); they are read once
when this module is imported, because the middleware and mounted routes need them before the
service class is instantiated. The analyzer plugins are loaded then too (:data:`HOST`); a plugin
that fails to import is logged and listed at ``GET /plugins``, never fatal. ``HOST.reload()``
picks up plugins installed later (the tests use it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException
from starlette.exceptions import HTTPException

from cerebrascan.atlas.files import AtlasNotInstalledError, preload_sri24
from cerebrascan.brain_extraction.extractor import BrainExtractor
from cerebrascan.dicom_analysis import DicomAnalysis
from cerebrascan.errors import InputError, RunnerUnavailableError, StorageFullError
from cerebrascan.imaging.array_pool import default_pool
from cerebrascan.inputs.dicom.selection import load_rules
from cerebrascan.inputs.dicom.study_builder import StripSkull
from cerebrascan.inputs.dicom.upload import (
    inspect_upload,
    parse_series_map,
    single_archive,
)
from cerebrascan.inputs.nifti import read_uploads
from cerebrascan.observability import record_serving_model
from cerebrascan.pipeline import AnalysisPipeline, build_analyzer_host
from cerebrascan.registry import resolve_model
from cerebrascan.serving.audit import AuditMiddleware, note_study
from cerebrascan.serving.exposure import check_exposure, serving_http_host
from cerebrascan.serving.grpc.server import start_oip_server
from cerebrascan.serving.http.admin import admin_app
from cerebrascan.serving.http.audit import audit_app
from cerebrascan.serving.http.auth import ApiKeyMiddleware, caller_of
from cerebrascan.serving.http.cohorts import cohorts_app
from cerebrascan.serving.http.dicom_send import dicom_send_app
from cerebrascan.serving.http.openapi import openapi_app
from cerebrascan.serving.http.patients import patients_app
from cerebrascan.serving.http.plugins import plugins_app
from cerebrascan.serving.http.route_labels import RawPathRestoreMiddleware, install_route_labels
from cerebrascan.serving.http.server_errors import ServerErrorMessageMiddleware
from cerebrascan.serving.http.studies import studies_app
from cerebrascan.serving.http.upload_limit import UploadLimitMiddleware
from cerebrascan.serving.http.uploads_only import refuse_remote_file_fields
from cerebrascan.serving.http.views import palette_app
from cerebrascan.serving.jobs import JobQueueLimitMiddleware, configure_job_retention
from cerebrascan.serving.limits import AnalysisLimiter, check_declared_memory
from cerebrascan.serving.logs import RequestIdMiddleware, configure_logging
from cerebrascan.serving.retention import RetentionSweeper
from cerebrascan.serving.runner_service import (
    build_runner_service,
    front_readiness,
    remote_runner_factory,
    runner_service_client,
)
from cerebrascan.serving.tenants import StudyTenantGuard, TaskTenantGuard
from cerebrascan.settings import Settings
from cerebrascan.store.artefacts import StudyArtefacts, sweep_interrupted_writes
from cerebrascan.store.audit import AuditTrail
from cerebrascan.store.deletion import StudyDeletion, lazy_repository
from schemas.analysis import AnalyzeOptions, AnalyzeResponse
from schemas.dicom import DicomInventory

logger = logging.getLogger("cerebrascan.service")

SETTINGS = Settings()
# no start with auth off on an address other machines reach (auth.allow_open_network)
check_exposure(SETTINGS.auth, SETTINGS.grpc, serving_http_host())


def _configure_logging() -> None:
    """Let our INFO messages through; BentoML's handlers print them (no patient data)."""
    for name in ("cerebrascan", "plugins", "runners"):
        logging.getLogger(name).setLevel(logging.INFO)


_configure_logging()
configure_logging(SETTINGS.logging)
configure_job_retention(SETTINGS.jobs)
# whole-study arrays reuse this worker's memory from study to study (bounds.array_pool_mb)
default_pool().configure(int(SETTINGS.bounds.array_pool_mb * (1 << 20)))
refuse_remote_file_fields()
# request metrics and access-log lines carry route templates, never ids from the path
install_route_labels()
HOST = build_analyzer_host(SETTINGS)
# deletes studies: DELETE /studies/{id} and the retention sweep (retention.study_days)
# analyses at once in this worker, HTTP /analyze* and gRPC ModelInfer together (bounds)
ANALYSIS_LIMITER = AnalysisLimiter(
    SETTINGS.bounds.max_concurrent_analyses, SETTINGS.bounds.queue_wait_s
)
STUDY_REPOSITORY = lazy_repository(SETTINGS)
STUDY_DELETION = StudyDeletion(STUDY_REPOSITORY, StudyArtefacts(SETTINGS.studies_dir))
# the DICOM series rules are read once: a bad rules file stops the start, not a request
DICOM_RULES = load_rules(SETTINGS.dicom.rules_file)
_BRAIN_EXTRACTOR_LOCK = threading.Lock()
_brain_extractors: list[StripSkull | None] = []


def _brain_extractor() -> StripSkull | None:
    """The brain extraction of DICOM studies (``brain_extraction`` settings), loaded on first
    use; None when this server has none (its DICOM studies must be skull-stripped)."""
    with _BRAIN_EXTRACTOR_LOCK:
        if not _brain_extractors:
            extractor: StripSkull | None = None
            try:
                extractor = BrainExtractor.from_settings(SETTINGS.brain_extraction).mask
            except (FileNotFoundError, ValueError, OSError) as exc:
                logger.warning("no brain extraction for DICOM studies: %s", exc)
            _brain_extractors.append(extractor)
        return _brain_extractors[0]


def _serving_pipeline() -> AnalysisPipeline | None:
    """The started service's pipeline, for the admin routes (None before start-up)."""
    try:
        service = bentoml.get_current_service()
    except BentoMLException:
        return None
    return getattr(service, "pipeline", None)


def _audit_trail() -> AuditTrail:
    """The audit trail in the study store (opened with it, on first use)."""
    return AuditTrail(STUDY_REPOSITORY().engine)


def _tenant(ctx: bentoml.Context | None) -> str:
    """The tenant of the API key that sent the request (``default`` with auth off)."""
    return caller_of(ctx.request.scope).tenant if ctx is not None else "default"


def _note_for_audit(
    ctx: bentoml.Context | None,
    study_id: str,
    options: AnalyzeOptions,
    pipeline: AnalysisPipeline,
) -> None:
    """Name the analysed study (and its patient's stored key) in the request's audit record."""
    if ctx is None:
        return
    key = pipeline.records.patient_key(options.patient_id) if options.patient_id else None
    note_study(ctx.request.scope, study_id, key)


@contextmanager
def _as_http_errors() -> Iterator[None]:
    """Bad input → its 4xx; an unreachable runner service → 503 (BentoML's own errors)."""
    try:
        yield
    except InputError as exc:
        raise BentoMLException(str(exc), error_code=HTTPStatus(exc.status_code)) from exc
    except RunnerUnavailableError as exc:
        raise BentoMLException(str(exc), error_code=HTTPStatus.SERVICE_UNAVAILABLE) from exc
    except StorageFullError as exc:
        # the body BentoML sends is ServerErrorMessageMiddleware's; the details are logged
        logger.error("%s", exc)
        raise BentoMLException(str(exc), error_code=HTTPStatus.INSUFFICIENT_STORAGE) from exc


@bentoml.service(
    name="cerebrascan",
    traffic={"timeout": 600, "max_concurrency": 4},
    workers=1,
    # sync APIs run in this many threads (BentoML's default is 1: one study at a time)
    threads=SETTINGS.batching.front_threads,
)
@bentoml.asgi_app(
    studies_app(
        SETTINGS.studies_dir,
        SETTINGS.report,
        SETTINGS.views,
        deletion=STUDY_DELETION,
    ),
    path="/studies",
)
# POST /studies/{id}/dicom/send (admin): SEG, SR and PDF to a pacs.targets entry
@bentoml.asgi_app(
    dicom_send_app(SETTINGS.pacs, StudyArtefacts(SETTINGS.studies_dir), SETTINGS.report),
    path="/studies",
)
@bentoml.asgi_app(patients_app(SETTINGS), path="/patients")
@bentoml.asgi_app(admin_app(SETTINGS, HOST, _serving_pipeline), path="/admin")
# cohorts run on a Ray cluster; Ray is imported only when a cohort route runs (501 without it)
@bentoml.asgi_app(cohorts_app(SETTINGS), path="/cohorts")
@bentoml.asgi_app(plugins_app(HOST), path="/")
# GET /audit (admin): the tenant's audit trail of patient-linked reads and writes
@bentoml.asgi_app(audit_app(lambda: _audit_trail()), path="/")
@bentoml.asgi_app(palette_app(), path="/")
# the whole API in GET /docs.json (BentoML's spec leaves the mounted Starlette apps out)
@bentoml.asgi_app(openapi_app(lambda: CerebraScan), path="/")
class CerebraScan:
    """Segments a 4-modality brain MRI and reports tumour volumes (research use only)."""

    if SETTINGS.batching.remote_runner and SETTINGS.batching.runner_url is None:
        # the network runs in its own service, batching cases across requests (docs/serving.md)
        runner_service = bentoml.depends(build_runner_service(SETTINGS))

    def __init__(self) -> None:
        logger.info("starting with settings %s", SETTINGS.masked())
        try:
            preload_sri24()  # so the first study does not pay for reading the atlas
        except AtlasNotInstalledError as exc:
            logger.warning("atlas analyzers will fail until the atlas is installed: %s", exc)
        model = resolve_model(SETTINGS)
        self.pipeline = AnalysisPipeline(
            SETTINGS,
            model,
            host=HOST,
            runner_factory=remote_runner_factory(self._runner_service(), SETTINGS)
            if SETTINGS.batching.remote_runner
            else None,
        )
        # Open Inference Protocol over gRPC on its own port, sharing this pipeline
        self.grpc_server = start_oip_server(
            SETTINGS, lambda: self.pipeline, limiter=ANALYSIS_LIMITER
        )
        # /readyz: the runner answers (the reference tile, cached; or the runner service's)
        self.readiness = front_readiness(
            SETTINGS,
            lambda: self.pipeline.runner,
            self._runner_service() if SETTINGS.batching.remote_runner else None,
        )
        # study folders a killed server left half-written (no record) go before serving
        sweep_interrupted_writes(
            self.pipeline.artefacts,
            lambda study_id: self.pipeline.records.get_study(study_id) is not None,
        )
        self.retention = RetentionSweeper(SETTINGS.retention, STUDY_DELETION)
        self.retention.start()
        record_serving_model(model.name, model.version, model.alias)
        logger.info("serving %s version %s (%s)", model.name, model.version, model.alias)

    def _runner_service(self) -> Any:
        """The runner service: deployed on its own at ``batching.runner_url`` (its HTTP
        client, docs/deploy.md), or the ``bentoml.depends`` one started beside the front."""
        if SETTINGS.batching.runner_url is not None:
            return runner_service_client(SETTINGS)
        return self.runner_service

    def __is_ready__(self) -> bool:
        """Ready when the runner can answer (``/readyz``; 503 with the reason otherwise)."""
        probe = self.readiness()
        if not probe.ready:
            raise HTTPException(status_code=503, detail=f"not ready: {probe.reason}")
        return True

    # a task: POST /analyze answers synchronously, /analyze/submit|status|get run it as a job
    # (BentoML's decorators come from _bentoml_sdk, which ships no type information)
    @bentoml.task(route="/analyze")  # type: ignore[untyped-decorator]
    def analyze(
        self,
        t1n: Path,
        t1c: Path,
        t2w: Path,
        t2f: Path,
        options: AnalyzeOptions | None = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> AnalyzeResponse:
        """Segment NETC / SNFH / ET, measure volumes and run the analyzer plugins.

        Multipart fields ``t1n, t1c, t2w, t2f`` are NIfTI files (.nii or .nii.gz) on one grid;
        ``options`` is optional JSON (see ``AnalyzeOptions``; ``options.analyzers.<name>`` goes
        to that analyzer). The label map is then available at ``segmentation_url``; each
        analyzer's result, error or artefacts under ``analyzers.<name>``.
        """
        files = {"t1n": t1n, "t1c": t1c, "t2w": t2w, "t2f": t2f}
        deadline = time.monotonic() + SETTINGS.bounds.request_deadline_s
        with _as_http_errors(), ANALYSIS_LIMITER.slot("HTTP /analyze"):
            check_declared_memory(files, SETTINGS.bounds.max_request_memory_mb)
            # the model this study is decoded for serves all of it, even if a promotion lands now
            with self.pipeline.serving_for_study() as serving:
                model, _ = serving
                clock = time.perf_counter()
                study = read_uploads(
                    files, tuple(model.spec.modalities), max_voxels=SETTINGS.limits.max_voxels
                )
                decode_ms = (time.perf_counter() - clock) * 1000
                options = options or AnalyzeOptions()
                analysis = self.pipeline.run(
                    study,
                    options,
                    serving=serving,
                    input_timings_ms={"decode": decode_ms},
                    deadline=deadline,
                    tenant=_tenant(ctx),
                )
            _note_for_audit(ctx, analysis.response.study_id, options, self.pipeline)
            return analysis.response

    # POST /analyze/dicom (and /analyze/dicom/submit|status|get as a job): a scanner's study
    @bentoml.task(route="/analyze/dicom")  # type: ignore[untyped-decorator]
    def analyze_dicom(
        self,
        # lists: BentoML 1.4 cannot make an optional upload field (Path | None); pydantic
        # copies the [] default per request
        archive: list[Path] = [],  # noqa: B006
        files: list[Path] = [],  # noqa: B006
        series_map: dict[str, str] | None = None,
        options: AnalyzeOptions | None = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> AnalyzeResponse:
        """Segment a DICOM study: series chosen per contrast, put on the reference grid.

        Multipart ``archive`` (a zip of the study, nested folders allowed) or repeated
        ``files``; optional ``series_map`` JSON (``{"t1c": SeriesInstanceUID, ...}``) and
        ``options`` as for ``/analyze`` (``skull_stripped`` defaults to false here: brain
        extraction runs when configured). Labels come back on the reference series' grid;
        the answer's ``dicom`` section says which series and rule, grids and resampling.
        """
        options = options or AnalyzeOptions()
        deadline = time.monotonic() + SETTINGS.bounds.request_deadline_s
        with _as_http_errors(), ANALYSIS_LIMITER.slot("HTTP /analyze/dicom"):
            analysis = DicomAnalysis(self.pipeline, DICOM_RULES, _brain_extractor()).run(
                single_archive(archive),
                [(path.name, path) for path in files],
                options,
                series_map=parse_series_map(series_map),
                deadline=deadline,
                tenant=_tenant(ctx),
            )
            _note_for_audit(ctx, analysis.response.study_id, options, self.pipeline)
            return analysis.response

    @bentoml.api(route="/dicom/inspect")  # type: ignore[untyped-decorator]
    def inspect_dicom(
        self,
        archive: list[Path] = [],  # noqa: B006
        files: list[Path] = [],  # noqa: B006
        series_map: dict[str, str] | None = None,
    ) -> DicomInventory:
        """Inventory of a DICOM upload without analysing it: studies, series, proposed series
        per contrast and why, geometry checks, and what would make ``/analyze/dicom`` refuse.
        """
        modalities = tuple(self.pipeline.model.spec.modalities)
        with _as_http_errors():
            return inspect_upload(
                single_archive(archive),
                [(path.name, path) for path in files],
                modalities,
                SETTINGS.dicom,
                rules=DICOM_RULES,
                series_map=parse_series_map(series_map),
            )


# The first added is the outermost: the real path (BentoML's metrics saw its template), request
# id, then API keys, then the upload limit.
CerebraScan.add_asgi_middleware(RawPathRestoreMiddleware)  # type: ignore[attr-defined]
# 503/507 answers say why and what to do (BentoML sends one generic text for any 5xx)
CerebraScan.add_asgi_middleware(ServerErrorMessageMiddleware)  # type: ignore[attr-defined]
# bentoml.service made CerebraScan a Service; mypy ignores class decorators and sees the class.
CerebraScan.add_asgi_middleware(RequestIdMiddleware)  # type: ignore[attr-defined]
CerebraScan.add_asgi_middleware(ApiKeyMiddleware, settings=SETTINGS.auth)  # type: ignore[attr-defined]
CerebraScan.add_asgi_middleware(JobQueueLimitMiddleware, max_queued=SETTINGS.jobs.max_queued)  # type: ignore[attr-defined]
CerebraScan.add_asgi_middleware(  # type: ignore[attr-defined]
    UploadLimitMiddleware, max_bytes=int(SETTINGS.limits.max_upload_mb * 1024 * 1024)
)
# tenants (inside the key check, which names the caller's tenant): one audit record per
# patient-linked request, then another tenant's study or job answers 404 like an unknown one
CerebraScan.add_asgi_middleware(AuditMiddleware, trail=_audit_trail)  # type: ignore[attr-defined]
CerebraScan.add_asgi_middleware(  # type: ignore[attr-defined]
    StudyTenantGuard,
    repository=STUDY_REPOSITORY,
    artefacts=StudyArtefacts(SETTINGS.studies_dir),
)
CerebraScan.add_asgi_middleware(TaskTenantGuard)  # type: ignore[attr-defined]
