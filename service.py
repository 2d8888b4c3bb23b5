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

from cerebrascan.atlas.files import AtlasNotInstalledError, preload_sri24
from cerebrascan.brain_extraction.extractor import BrainExtractor
from cerebrascan.errors import InputError, RunnerUnavailableError
from cerebrascan.imaging.coregistration import register_rigid
from cerebrascan.inputs.dicom.selection import load_rules
from cerebrascan.inputs.dicom.study_builder import StripSkull
from cerebrascan.inputs.dicom.upload import (
    inspect_upload,
    parse_series_map,
    read_dicom_study,
    single_archive,
)
from cerebrascan.inputs.nifti import read_uploads
from cerebrascan.observability import record_serving_model
from cerebrascan.pipeline import AnalysisPipeline, build_analyzer_host
from cerebrascan.registry import resolve_model
from cerebrascan.serving.exposure import check_exposure, serving_http_host
from cerebrascan.serving.grpc.server import start_oip_server
from cerebrascan.serving.http.admin import admin_app
from cerebrascan.serving.http.auth import ApiKeyMiddleware
from cerebrascan.serving.http.cohorts import cohorts_app
from cerebrascan.serving.http.openapi import openapi_app
from cerebrascan.serving.http.patients import patients_app
from cerebrascan.serving.http.plugins import plugins_app
from cerebrascan.serving.http.route_labels import RawPathRestoreMiddleware, install_route_labels
from cerebrascan.serving.http.studies import studies_app
from cerebrascan.serving.http.upload_limit import UploadLimitMiddleware
from cerebrascan.serving.http.uploads_only import refuse_remote_file_fields
from cerebrascan.serving.http.views import palette_app
from cerebrascan.serving.jobs import JobQueueLimitMiddleware, configure_job_retention
from cerebrascan.serving.logs import RequestIdMiddleware, configure_logging
from cerebrascan.serving.retention import RetentionSweeper
from cerebrascan.serving.runner_service import (
    build_runner_service,
    remote_runner_factory,
    runner_service_client,
)
from cerebrascan.settings import Settings
from cerebrascan.store.artefacts import StudyArtefacts
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
refuse_remote_file_fields()
# request metrics and access-log lines carry route templates, never ids from the path
install_route_labels()
HOST = build_analyzer_host(SETTINGS)
# deletes studies: DELETE /studies/{id} and the retention sweep (retention.study_days)
STUDY_DELETION = StudyDeletion(lazy_repository(SETTINGS), StudyArtefacts(SETTINGS.studies_dir))
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


@contextmanager
def _as_http_errors() -> Iterator[None]:
    """Bad input → its 4xx; an unreachable runner service → 503 (BentoML's own errors)."""
    try:
        yield
    except InputError as exc:
        raise BentoMLException(str(exc), error_code=HTTPStatus(exc.status_code)) from exc
    except RunnerUnavailableError as exc:
        raise BentoMLException(str(exc), error_code=HTTPStatus.SERVICE_UNAVAILABLE) from exc


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
@bentoml.asgi_app(patients_app(SETTINGS), path="/patients")
@bentoml.asgi_app(admin_app(SETTINGS, HOST, _serving_pipeline), path="/admin")
# cohorts run on a Ray cluster; Ray is imported only when a cohort route runs (501 without it)
@bentoml.asgi_app(cohorts_app(SETTINGS), path="/cohorts")
@bentoml.asgi_app(plugins_app(HOST), path="/")
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
        self.grpc_server = start_oip_server(SETTINGS, lambda: self.pipeline)
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
        """Ready once the model is loaded (``/readyz``)."""
        return self.pipeline is not None

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
    ) -> AnalyzeResponse:
        """Segment NETC / SNFH / ET, measure volumes and run the analyzer plugins.

        Multipart fields ``t1n, t1c, t2w, t2f`` are NIfTI files (.nii or .nii.gz) on one grid;
        ``options`` is optional JSON (see ``AnalyzeOptions``; ``options.analyzers.<name>`` goes
        to that analyzer). The label map is then available at ``segmentation_url``; each
        analyzer's result, error or artefacts under ``analyzers.<name>``.
        """
        files = {"t1n": t1n, "t1c": t1c, "t2w": t2w, "t2f": t2f}
        with _as_http_errors():
            # the model this study is decoded for serves all of it, even if a promotion lands now
            with self.pipeline.serving_for_study() as serving:
                model, _ = serving
                clock = time.perf_counter()
                study = read_uploads(
                    files, tuple(model.spec.modalities), max_voxels=SETTINGS.limits.max_voxels
                )
                decode_ms = (time.perf_counter() - clock) * 1000
                analysis = self.pipeline.run(
                    study,
                    options or AnalyzeOptions(),
                    serving=serving,
                    input_timings_ms={"decode": decode_ms},
                )
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
    ) -> AnalyzeResponse:
        """Segment a DICOM study: series chosen per contrast, put on the reference grid.

        Multipart ``archive`` (a zip of the study, nested folders allowed) or repeated
        ``files``; optional ``series_map`` JSON (``{"t1c": SeriesInstanceUID, ...}``) and
        ``options`` as for ``/analyze`` (``skull_stripped`` defaults to false here: brain
        extraction runs when configured). Labels come back on the reference series' grid;
        the answer's ``dicom`` section says which series and rule, grids and resampling.
        """
        options = options or AnalyzeOptions()
        with _as_http_errors():
            with self.pipeline.serving_for_study() as serving:
                model, _ = serving
                built = read_dicom_study(
                    single_archive(archive),
                    [(path.name, path) for path in files],
                    tuple(model.spec.modalities),
                    SETTINGS.dicom,
                    max_voxels=SETTINGS.limits.max_voxels,
                    skull_stripped=bool(options.skull_stripped),
                    rules=DICOM_RULES,
                    series_map=parse_series_map(series_map),
                    strip_skull=_brain_extractor(),
                    register=register_rigid,
                )
                analysis = self.pipeline.run(
                    built.study, options, serving=serving, input_timings_ms=built.timings_ms
                )
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
# bentoml.service made CerebraScan a Service; mypy ignores class decorators and sees the class.
CerebraScan.add_asgi_middleware(RequestIdMiddleware)  # type: ignore[attr-defined]
CerebraScan.add_asgi_middleware(ApiKeyMiddleware, settings=SETTINGS.auth)  # type: ignore[attr-defined]
CerebraScan.add_asgi_middleware(JobQueueLimitMiddleware, max_queued=SETTINGS.jobs.max_queued)  # type: ignore[attr-defined]
CerebraScan.add_asgi_middleware(  # type: ignore[attr-defined]
    UploadLimitMiddleware, max_bytes=int(SETTINGS.limits.max_upload_mb * 1024 * 1024)
)
