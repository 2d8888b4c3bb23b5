"""The analysis pipeline behind ``POST /analyze``: decode -> segment -> analyzers -> store."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import nibabel as nib

from cerebrascan.errors import InputError
from cerebrascan.imaging.nifti_decode import assemble_study, decode_nifti
from cerebrascan.observability import record_study
from cerebrascan.regions import volumes_ml
from cerebrascan.registry import ResolvedModel
from cerebrascan.segmentation import segment_study
from cerebrascan.settings import Settings
from cerebrascan.store import PatientIdError, StudyRecord, StudyRepository
from cerebrascan.study_store import (
    RESULT_FILE,
    SEGMENTATION_FILE,
    StudyArtefactSink,
    StudyStore,
    artefact_file_name,
)
from plugins.analyzer import Need
from plugins.host import AnalyzerHost, AnalyzerOptionsError, StudyInputs
from runners.onnx_runner import OnnxSegmentationRunner
from schemas.analysis import AnalyzeOptions, AnalyzeResponse, Geometry, ModelInfo, RegionVolumes

logger = logging.getLogger(__name__)


class AnalysisPipeline:
    """Holds the loaded model and runs one study at a time through every stage.

    Args:
        settings: server settings (runner, limits, storage, plugins).
        model: the registry version to serve.
        host: the analyzer host; default: one built from ``settings.plugins``.
        records: the study store (records of studies); default: the one ``settings`` names,
            migrated to the newest schema.
    """

    def __init__(
        self,
        settings: Settings,
        model: ResolvedModel,
        host: AnalyzerHost | None = None,
        records: StudyRepository | None = None,
    ) -> None:
        self.settings = settings
        self.model = model
        self.runner = OnnxSegmentationRunner(model.onnx_path, model.spec, settings.runner)
        self.store = StudyStore(settings.studies_dir)
        self.records = records if records is not None else StudyRepository.from_settings(settings)
        self.host = host if host is not None else AnalyzerHost(settings.plugins)

    def analyze(self, files: Mapping[str, Path], options: AnalyzeOptions) -> AnalyzeResponse:
        """Analyse the uploaded modality files.

        Raises:
            InputError: the files cannot be analysed (see :func:`decode_nifti`),
                ``options.analyzers`` names an unknown analyzer or holds invalid options (400),
                or ``options.patient_id`` is refused (422; the message never repeats it).
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
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        volumes = {
            name: decode_nifti(path, field=name, max_voxels=self.settings.limits.max_voxels)
            for name, path in files.items()
        }
        study = assemble_study(volumes, tuple(self.model.spec.modalities))
        del volumes
        timings["decode"] = (time.perf_counter() - clock) * 1000
        mirror_tta = (
            self.settings.runner.mirror_tta if options.mirror_tta is None else options.mirror_tta
        )
        needs = self.host.needs
        segmentation = segment_study(
            study,
            self.runner,
            mirror_tta=mirror_tta,
            keep_probabilities=Need.PROBABILITIES in needs,
            tta_disagreement=mirror_tta and Need.TTA_DISAGREEMENT in needs,
            min_component_ml=self.settings.runner.min_component_ml,
        )
        timings.update(segmentation.timings_ms)
        study_id = uuid.uuid4().hex
        clock = time.perf_counter()
        outcomes = self.host.run(
            StudyInputs(
                study_id=study_id,
                affine=study.affine,
                spacing_mm=study.spacing,
                modalities=study.modalities,
                images=study.images,
                segmentation=segmentation.labels,
                probabilities=segmentation.probabilities,
                tta_disagreement=segmentation.tta_disagreement,
            ),
            artefacts=StudyArtefactSink(self.store, study_id, study.affine, study.shape),
            options=analyzer_options,
        )
        segmentation.probabilities = segmentation.tta_disagreement = None
        timings["analyzers"] = (time.perf_counter() - clock) * 1000
        response = AnalyzeResponse(
            study_id=study_id,
            created_at=datetime.now(UTC),
            model=ModelInfo(
                name=self.model.name,
                version=self.model.version,
                alias=self.model.alias,
                runner=self.runner.name,
                providers=self.runner.providers,
                mirror_tta=mirror_tta,
                trained_on=self.model.training_data,
                min_component_ml=self.settings.runner.min_component_ml,
                removed_islands=segmentation.removed_islands,
            ),
            geometry=Geometry(
                shape=study.shape,
                spacing_mm=study.spacing,
                affine=study.affine.tolist(),
                orientation="".join(nib.aff2axcodes(study.affine)),
            ),
            volumes_ml=RegionVolumes(**volumes_ml(segmentation.labels, study.spacing)),
            timings_ms=timings,
            segmentation_url=f"/studies/{study_id}/segmentation",
            analyzers=outcomes,
        )
        clock = time.perf_counter()
        result_json = response.model_dump_json()
        self.store.save(study_id, segmentation.labels, study.affine, result_json)
        self._save_record(response, json.loads(result_json), patient_key, options)
        timings["store"] = (time.perf_counter() - clock) * 1000
        response.timings_ms = {k: round(v, 1) for k, v in timings.items()}
        record_study(timings, outcomes)
        logger.info("study %s analysed in %s ms", study_id, response.timings_ms)
        return response

    def _save_record(
        self,
        response: AnalyzeResponse,
        findings: dict[str, object],
        patient_key: str | None,
        options: AnalyzeOptions,
    ) -> StudyRecord:
        """Record the study in the store, with the locations of its artefact files."""
        folder = self.store.folder(response.study_id)
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
        )

    def segmentation_path(self, study_id: str) -> Path:
        """The stored label map of a study (InputError 404 if unknown)."""
        return self.store.artefact(study_id, SEGMENTATION_FILE)

    def result_path(self, study_id: str) -> Path:
        """The stored JSON result of a study (InputError 404 if unknown)."""
        return self.store.artefact(study_id, RESULT_FILE)
