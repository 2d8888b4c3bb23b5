"""The four stages of a cohort study, as Ray Data calls them (nothing here imports Ray).

1. :func:`fetch_and_prepare` (a CPU task per study): read the four contrasts (local or S3),
   decode them with the service's own validated decoder (``inputs.nifti.read_uploads``) and
   preprocess them for the network (:func:`~cerebrascan.segmentation.prepare_case`).
2. :class:`CaseSegmenter` (an actor of the model pool, with its GPU when asked): resolves the
   registry model once and runs the network on each prepared case.
3. :class:`StudyFinisher` (an actor of the analysis pool, CPU): the prediction back on the
   study's grid, then the service's :meth:`AnalysisPipeline.plan` / :meth:`~AnalysisPipeline.
   complete` - analyzers and store - into a scratch store (or the real one with ``--store``).
4. :func:`write_study` (a CPU task per study): the study's files and its ledger row.

So the accelerator only runs the network while CPUs decode, preprocess, postprocess and run
the analyzers of other studies. Steps 2 and 3 share one time limit per study. A study's
failure never raises out of a stage: it travels on as ``status``/``error`` and ends as a row,
so one bad study never stops the cohort.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from pydantic import ValidationError

from cerebrascan.brain_extraction import BrainExtractor
from cerebrascan.brain_extraction.settings import BrainExtractionSettings
from cerebrascan.cohorts.ledger import write_ledger_row, write_study_files
from cerebrascan.cohorts.locations import MissingObjectError, OutputLocation, read_uri
from cerebrascan.cohorts.results import failure_row, ok_row
from cerebrascan.errors import InputError
from cerebrascan.imaging.coregistration import register_rigid
from cerebrascan.inputs.dicom.upload import read_dicom_study
from cerebrascan.inputs.nifti import read_uploads
from cerebrascan.inputs.study import Study
from cerebrascan.pipeline import AnalysisPipeline, RunnerInfo, StudyAnalysis, cohort_study_id
from cerebrascan.registry import resolve_model_version
from cerebrascan.segmentation import finish_case, predict_case, prepare_case
from cerebrascan.settings import Settings
from runners.factory import build_runner
from schemas.analysis import AnalyzeOptions
from schemas.model_spec import ModelSpec

logger = logging.getLogger(__name__)

Result = TypeVar("Result")


@dataclass(frozen=True)
class CohortJob:
    """What every stage of one cohort run needs (pickled to the Ray workers)."""

    settings: Settings
    out_uri: str
    model_name: str
    model_version: str
    spec: ModelSpec
    tta_disagreement: bool = False
    """The analyzers need the mirror-TTA flips' disagreement (the runner computes it)."""
    store: bool = False
    """Save every study in the configured study store (else a scratch store per actor)."""

    @property
    def out(self) -> OutputLocation:
        return OutputLocation(self.out_uri, self.settings.storage)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.spec.modalities)


def _carry_failure(row: dict[str, Any], status: str, error: str) -> dict[str, Any]:
    row.update(status=status, error=error, study=None, case=None)
    return row


def _add_timings(row: dict[str, Any], **seconds: float) -> None:
    row["timings"] = json.dumps({**json.loads(row.get("timings") or "{}"), **seconds})


def fetch_and_prepare(row: dict[str, Any], job: CohortJob) -> dict[str, Any]:
    """Stage 1 of a study: the decoded study and the case prepared for the network (or the
    reason it has none).

    Adds ``status`` (empty when fine), ``error``, ``study``, ``case`` and ``timings`` (JSON
    seconds) to the manifest row.
    """
    row = fetch_and_decode(row, job)
    if row["status"]:
        return row
    clock = time.perf_counter()
    try:
        row["case"] = prepare_case(study_from_row(row), job.spec)
    except Exception as exc:  # one study's fault is its row
        logger.exception("a cohort study failed in preprocessing")
        return _carry_failure(row, "failed", f"preprocess failed: {type(exc).__name__}: {exc}")
    _add_timings(row, preprocess=time.perf_counter() - clock)
    return row


def fetch_and_decode(row: dict[str, Any], job: CohortJob) -> dict[str, Any]:
    """Stage 1a of a study: the decoded :class:`Study` (or the reason it has none).

    Four NIfTI contrasts go through the ``/analyze`` decoder, a ``dicom`` zip or folder
    through the ``/analyze/dicom`` path (series selection, volumes, reference grid, brain
    extraction unless the row says ``skull_stripped``). Adds ``status`` (empty when fine),
    ``error``, ``study`` and ``timings`` (JSON seconds) to the manifest row.
    """
    timings: dict[str, float] = {}
    row = dict(row)
    row["timings"] = "{}"
    clock = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="cohort-fetch-"))
    try:
        if row.get("dicom"):
            study, dicom_seconds = _read_dicom(str(row["dicom"]), row, scratch, job)
            timings.update(dicom_seconds)
        else:
            files: dict[str, Path] = {}
            for modality in job.modalities:
                uri = str(row.get(modality) or "")
                if not uri.startswith("s3://"):
                    files[modality] = Path(uri)  # the decoder reads local files in place
                    if not files[modality].is_file():
                        raise MissingObjectError(f"{modality}: no such file {uri}")
                    continue
                target = scratch / f"{modality}.nii.gz"
                target.write_bytes(_read_modality(uri, modality, job))
                files[modality] = target
            timings["fetch"] = time.perf_counter() - clock
            clock = time.perf_counter()
            study = read_uploads(files, job.modalities, max_voxels=job.settings.limits.max_voxels)
            timings["decode"] = time.perf_counter() - clock
    except MissingObjectError as exc:
        return _carry_failure(row, "input_error", f"missing input: {exc}")
    except InputError as exc:
        return _carry_failure(row, "input_error", f"invalid image: {exc}")
    except Exception as exc:  # noqa: BLE001 - S3 outage, permissions: a failed row, not a crash
        return _carry_failure(row, "failed", f"fetch failed: {type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    row.update(status="", error="", study=study, timings=json.dumps(timings))
    return row


def _read_dicom(
    uri: str, row: dict[str, Any], scratch: Path, job: CohortJob
) -> tuple[Study, dict[str, float]]:
    """A ``dicom`` row's study: a zip (local or ``s3://``) or a local folder of files.

    Raises:
        MissingObjectError: no such zip, folder or object.
        InputError: what ``/analyze/dicom`` refuses (archive, selection, geometry, ...).
    """
    clock = time.perf_counter()
    archive: Path | None = None
    files: list[tuple[str, Path]] = []
    if uri.startswith("s3://"):
        archive = scratch / "study.zip"
        archive.write_bytes(read_uri(uri, job.settings.storage))
    elif Path(uri).is_dir():
        folder = Path(uri)
        files = [(str(p.relative_to(folder)), p) for p in sorted(folder.rglob("*")) if p.is_file()]
    elif Path(uri).is_file():
        archive = Path(uri)
    else:
        raise MissingObjectError(f"dicom: no such zip or folder {uri}")
    fetch_s = time.perf_counter() - clock
    skull_stripped = bool(row.get("skull_stripped"))
    built = read_dicom_study(
        archive,
        files,
        job.modalities,
        job.settings.dicom,
        max_voxels=job.settings.limits.max_voxels,
        skull_stripped=skull_stripped,
        strip_skull=None if skull_stripped else _brain_extractor(job.settings).mask,
        register=register_rigid,
    )
    seconds = {name: ms / 1000 for name, ms in built.timings_ms.items()}
    return built.study, {"fetch": fetch_s, **seconds}


@functools.lru_cache(maxsize=1)
def _extractor_for(settings_json: str) -> BrainExtractor:
    return BrainExtractor.from_settings(BrainExtractionSettings.model_validate_json(settings_json))


def _brain_extractor(settings: Settings) -> BrainExtractor:
    """This worker's brain extractor (its ONNX sessions load once per worker process)."""
    return _extractor_for(settings.brain_extraction.model_dump_json())


def _read_modality(uri: str, modality: str, job: CohortJob) -> bytes:
    try:
        return read_uri(uri, job.settings.storage)
    except MissingObjectError as exc:
        raise MissingObjectError(f"{modality}: {exc}") from None


def study_from_row(row: dict[str, Any]) -> Study:
    """The decoded study stage 1 put in a row."""
    study: Study = row["study"]
    return study


class _TimedCalls:
    """Runs calls in one worker thread under a time limit. A thread that overran cannot be
    stopped: it is abandoned (and counted) and later calls get a fresh one."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cohort-study")
        self.abandoned = 0

    def call(self, timeout_s: float, function: Callable[[], Result]) -> Result:
        """``function()``, or :class:`TimeoutError` after ``timeout_s``."""
        future = self._executor.submit(function)
        try:
            return future.result(timeout=max(timeout_s, 0.0))
        except FutureTimeout:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cohort-study")
            self.abandoned += 1
            logger.warning("a cohort study overran its time limit (%d so far)", self.abandoned)
            raise TimeoutError from None


def _timeout_row(row: dict[str, Any], timeout_s: float) -> None:
    row.update(status="failed", error=f"timed out: analysis took over {timeout_s:g} s")


class CaseSegmenter:
    """Stage 2, an actor of the model pool: resolves the registry model and builds its runner
    once, then runs the network on case after case (nothing else runs on its GPU).

    Args:
        job: the run's settings, model version and output.
    """

    def __init__(self, job: CohortJob) -> None:
        self.job = job
        settings = job.settings
        model = resolve_model_version(settings, job.model_name, job.model_version)
        self.runner = build_runner(
            model.folder, model.spec, settings.runner, settings.engine_cache_dir
        )
        self.runner_info = RunnerInfo.of(self.runner)
        self._calls = _TimedCalls()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame([self.segment(dict(row)) for row in batch.to_dict("records")])

    def segment(self, row: dict[str, Any]) -> dict[str, Any]:
        """One case: adds ``prediction``, ``runner`` and ``started_at``; drops the network
        input from ``case`` (stage 3 needs only its geometry)."""
        row.update(prediction=None, runner=None, started_at=time.time())
        if row.get("status"):
            return row
        case = row["case"]
        timeout_s = self.job.settings.cohorts.study_timeout_s
        mirror_tta = self.job.settings.runner.mirror_tta
        clock = time.perf_counter()
        try:
            prediction = self._calls.call(
                timeout_s,
                lambda: predict_case(
                    case,
                    self.runner,
                    mirror_tta=mirror_tta,
                    tta_disagreement=self.job.tta_disagreement,
                ),
            )
        except TimeoutError:
            _timeout_row(row, timeout_s)
        except Exception as exc:  # any other fault of this study becomes its row
            logger.exception("a cohort study failed in inference")
            row.update(status="failed", error=f"inference failed: {type(exc).__name__}: {exc}")
        else:
            row.update(prediction=prediction, runner=self.runner_info)
            _add_timings(row, inference=time.perf_counter() - clock)
        if row["status"]:
            row.update(study=None, case=None)
        else:
            row["case"] = dataclasses.replace(case, data=np.empty((0,), dtype=np.float32))
        return row


class StudyFinisher:
    """Stage 3, an actor of the analysis pool: the prediction back on the study's grid, the
    analyzers and the store, as :meth:`AnalysisPipeline.run` does after the network.

    Args:
        job: the run's settings, model version and output.
    """

    def __init__(self, job: CohortJob) -> None:
        self.job = job
        settings = job.settings
        self.model = resolve_model_version(settings, job.model_name, job.model_version)
        if not job.store:
            # a scratch data folder: the pipeline stores each study there and we copy the
            # files out; the registry and the engine cache stay the shared ones
            self._scratch: Path | None = Path(tempfile.mkdtemp(prefix="cerebrascan-cohort-"))
            settings = settings.model_copy(
                update={
                    "data_dir": self._scratch,
                    "mlflow_tracking_uri": settings.tracking_uri,
                    "store_url": None,
                    "runner": settings.runner.model_copy(
                        update={"engine_cache_dir": settings.engine_cache_dir}
                    ),
                }
            )
        else:
            self._scratch = None
        self.pipeline = AnalysisPipeline(settings, self.model, with_runner=False)
        self._calls = _TimedCalls()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame([self.analyse(dict(row)) for row in batch.to_dict("records")])

    def analyse(self, row: dict[str, Any]) -> dict[str, Any]:
        """One study: adds ``response`` (JSON) and ``segmentation`` (NIfTI bytes)."""
        row.update(response="", segmentation=b"")
        if row.get("status"):
            row.update(study=None, case=None, prediction=None)
            return row
        timeout_s = self.job.settings.cohorts.study_timeout_s
        # what is left of the study's time limit after the network
        left_s = timeout_s - (time.time() - float(row["started_at"]))
        try:
            response_json, segmentation = self._calls.call(left_s, lambda: self._finish(row))
        except TimeoutError:
            _timeout_row(row, timeout_s)
        except (InputError, ValidationError) as exc:
            row.update(status="input_error", error=f"invalid study: {exc}")
        except Exception as exc:  # any other fault of this study becomes its row
            logger.exception("a cohort study failed in analysis")
            row.update(status="failed", error=f"analysis failed: {type(exc).__name__}: {exc}")
        else:
            row.update(response=response_json, segmentation=segmentation)
        row.update(study=None, case=None, prediction=None)
        return row

    def _finish(self, row: dict[str, Any]) -> tuple[str, bytes]:
        study = study_from_row(row)
        options = AnalyzeOptions(
            patient_id=row.get("patient_id") or None, study_date=row.get("study_date") or None
        )
        timings = json.loads(row["timings"])
        # --store: one stored study per study key and model version, however often it runs
        study_id = cohort_study_id(str(row["study_key"]), self.model) if self.job.store else None
        plan = self.pipeline.plan(study, options, self.model, study_id=study_id)
        if isinstance(plan, StudyAnalysis):  # --store: this study was stored before
            analysis = plan
        else:
            clock = time.perf_counter()
            segmentation = finish_case(
                study,
                self.model.spec,
                row["case"],
                row["prediction"],
                keep_probabilities=plan.keep_probabilities,
                min_component_ml=self.job.settings.runner.min_component_ml,
            )
            segmentation.timings_ms = {
                "preprocess": timings.get("preprocess", 0.0) * 1000,
                "inference": timings.get("inference", 0.0) * 1000,
                "postprocess": (time.perf_counter() - clock) * 1000,
            }
            analysis = self.pipeline.complete(
                study,
                plan,
                segmentation,
                row["runner"],
                input_timings_ms={"decode": timings.get("decode", 0.0) * 1000},
            )
        study_id = analysis.response.study_id
        segmentation_bytes = self.pipeline.segmentation_path(study_id).read_bytes()
        # the answer /analyze gives (its timings include the store, unlike the stored copy)
        response_json = analysis.response.model_dump_json()
        if self._scratch is not None:  # the copy goes to --out; the scratch one is not kept
            shutil.rmtree(self.pipeline.artefacts.folder(study_id), ignore_errors=True)
        return response_json, segmentation_bytes


class StudyAnalyzer:
    """Stages 2 and 3 in one actor, for runs without GPUs (``cohorts.split_at_runner``): the
    network and the analysis of a study in one process, so its arrays do not cross the object
    store between them; several such actors overlap studies on the CPUs.

    Args:
        job: the run's settings, model version and output.
    """

    def __init__(self, job: CohortJob) -> None:
        self.segmenter = CaseSegmenter(job)
        self.finisher = StudyFinisher(job)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(
            [
                self.finisher.analyse(self.segmenter.segment(dict(row)))
                for row in batch.to_dict("records")
            ]
        )


def write_study(row: dict[str, Any], job: CohortJob) -> dict[str, Any]:
    """Stage 3 of a study: its files and ledger row under ``--out``.

    Returns:
        ``study_key``, ``status`` and ``row`` (the ledger row as JSON) for the progress bar.
    """
    key = str(row["study_key"])
    timings = {k: float(v) for k, v in json.loads(row.get("timings") or "{}").items()}
    try:
        if row.get("status"):
            ledger = failure_row(
                key, job.model_name, job.model_version, row["status"], row["error"], timings
            )
        else:
            clock = time.perf_counter()
            write_study_files(
                job.out, key, bytes(row["segmentation"]), str(row["response"]).encode("utf-8")
            )
            timings["write"] = time.perf_counter() - clock
            ledger = ok_row(key, json.loads(row["response"]), timings)
    except Exception as exc:  # noqa: BLE001 - the output store refused: a failed row
        ledger = failure_row(
            key, job.model_name, job.model_version, "failed", f"write failed: {exc}", timings
        )
    write_ledger_row(job.out, ledger)
    return {"study_key": key, "status": ledger["status"], "row": json.dumps(ledger)}
