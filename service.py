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
from http import HTTPStatus
from pathlib import Path

import bentoml
from bentoml.exceptions import BentoMLException

from cerebrascan.analysis import AnalysisPipeline
from cerebrascan.atlas import AtlasNotInstalledError, preload_sri24
from cerebrascan.errors import InputError
from cerebrascan.http.plugins import plugins_app
from cerebrascan.http.studies import studies_app
from cerebrascan.http.upload_limit import UploadLimitMiddleware
from cerebrascan.http.uploads_only import refuse_remote_file_fields
from cerebrascan.observability import record_serving_model
from cerebrascan.registry import resolve_model
from cerebrascan.settings import Settings
from plugins.host import AnalyzerHost
from schemas.analysis import AnalyzeOptions, AnalyzeResponse

logger = logging.getLogger("cerebrascan.service")

SETTINGS = Settings()


def _configure_logging() -> None:
    """Let our INFO messages through; BentoML's handlers print them (no patient data)."""
    for name in ("cerebrascan", "plugins", "runners"):
        logging.getLogger(name).setLevel(logging.INFO)


_configure_logging()
refuse_remote_file_fields()
HOST = AnalyzerHost(SETTINGS.plugins)


@bentoml.service(
    name="cerebrascan",
    traffic={"timeout": 600, "max_concurrency": 4},
    workers=1,
)
@bentoml.asgi_app(studies_app(SETTINGS.studies_dir), path="/studies")
@bentoml.asgi_app(plugins_app(HOST), path="/")
class CerebraScan:
    """Segments a 4-modality brain MRI and reports tumour volumes (research use only)."""

    def __init__(self) -> None:
        logger.info("starting with settings %s", SETTINGS.masked())
        try:
            preload_sri24()  # so the first study does not pay for reading the atlas
        except AtlasNotInstalledError as exc:
            logger.warning("atlas analyzers will fail until the atlas is installed: %s", exc)
        model = resolve_model(SETTINGS)
        self.pipeline = AnalysisPipeline(SETTINGS, model, host=HOST)
        record_serving_model(model.name, model.version, model.alias)
        logger.info("serving %s version %s (%s)", model.name, model.version, model.alias)

    def __is_ready__(self) -> bool:
        """Ready once the model is loaded (``/readyz``)."""
        return self.pipeline is not None

    @bentoml.api(route="/analyze")
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
        try:
            return self.pipeline.analyze(files, options or AnalyzeOptions())
        except InputError as exc:
            raise BentoMLException(str(exc), error_code=HTTPStatus(exc.status_code)) from exc


CerebraScan.add_asgi_middleware(
    UploadLimitMiddleware, max_bytes=int(SETTINGS.limits.max_upload_mb * 1024 * 1024)
)
