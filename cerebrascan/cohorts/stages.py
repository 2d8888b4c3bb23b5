"""The three stages of a cohort study, as Ray Data calls them (nothing here imports Ray).

1. :func:`fetch_and_decode` (a CPU task per study): read the four contrasts (local or S3) and
   decode them with the service's own validated decoder (``inputs.nifti.read_uploads``).
2. :class:`StudyAnalyzer` (an actor of the pool, one model per actor): the service's
   :meth:`AnalysisPipeline.run` - preprocess, runner, postprocess, analyzers - under a time
   limit, into a scratch store (or the real one with ``--store``).
3. :func:`write_study` (a CPU task per study): the study's files and its ledger row.

A study's failure never raises out of a stage: it travels on as ``status``/``error`` and ends
as a row, so one bad study never stops the cohort.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from cerebrascan.cohorts.ledger import write_ledger_row, write_study_files
from cerebrascan.cohorts.locations import MissingObjectError, OutputLocation, read_uri
from cerebrascan.cohorts.results import failure_row, ok_row
from cerebrascan.errors import InputError
from cerebrascan.inputs.nifti import read_uploads
from cerebrascan.inputs.study import Study
from cerebrascan.pipeline import AnalysisPipeline
from cerebrascan.registry import resolve_model_version
from cerebrascan.settings import Settings
from schemas.analysis import AnalyzeOptions

logger = logging.getLogger(__name__)

DICOM_NOT_AVAILABLE = (
    "dicom input: not supported yet - the DICOM path (issue #16) does not exist in this "
    "version; give the four NIfTI contrasts t1n, t1c, t2w, t2f instead"
)


@dataclass(frozen=True)
class CohortJob:
    """What every stage of one cohort run needs (pickled to the Ray workers)."""

    settings: Settings
    out_uri: str
    model_name: str
    model_version: str
    modalities: tuple[str, ...]
    store: bool = False
    """Save every study in the configured study store (else a scratch store per actor)."""

    @property
    def out(self) -> OutputLocation:
        return OutputLocation(self.out_uri, self.settings.storage)


def _carry_failure(row: dict[str, Any], status: str, error: str) -> dict[str, Any]:
    row.update(status=status, error=error, images=b"", shape="", affine="")
    return row


def fetch_and_decode(row: dict[str, Any], job: CohortJob) -> dict[str, Any]:
    """Stage 1 of a study: its images as float32 bytes (or the reason it has none).

    Adds ``status`` (empty when fine), ``error``, ``images``, ``shape``, ``affine`` and
    ``timings`` (JSON seconds) to the manifest row.
    """
    timings: dict[str, float] = {}
    row = dict(row)
    row["timings"] = "{}"
    if row.get("dicom"):
        return _carry_failure(row, "input_error", DICOM_NOT_AVAILABLE)
    clock = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="cohort-fetch-"))
    try:
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
    row.update(
        status="",
        error="",
        images=np.ascontiguousarray(study.images, dtype=np.float32).tobytes(),
        shape=json.dumps(list(study.images.shape)),
        affine=json.dumps(study.affine.tolist()),
        timings=json.dumps(timings),
    )
    return row


def _read_modality(uri: str, modality: str, job: CohortJob) -> bytes:
    try:
        return read_uri(uri, job.settings.storage)
    except MissingObjectError as exc:
        raise MissingObjectError(f"{modality}: {exc}") from None


def study_from_row(row: dict[str, Any], modalities: tuple[str, ...]) -> Study:
    """The decoded study stage 1 put in a row."""
    shape = tuple(json.loads(row["shape"]))
    images = np.frombuffer(row["images"], dtype=np.float32).reshape(shape)
    affine = np.asarray(json.loads(row["affine"]), dtype=np.float64)
    return Study(images=images, affine=affine, modalities=modalities)


class StudyAnalyzer:
    """Stage 2, an actor: resolves the registry model once, then analyses study after study.

    Args:
        job: the run's settings, model version and output.
    """

    def __init__(self, job: CohortJob) -> None:
        self.job = job
        settings = job.settings
        model = resolve_model_version(settings, job.model_name, job.model_version)
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
        self.pipeline = AnalysisPipeline(settings, model)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cohort-study")

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = [self.analyse(dict(row)) for row in batch.to_dict("records")]
        return pd.DataFrame(rows)

    def analyse(self, row: dict[str, Any]) -> dict[str, Any]:
        """One study: adds ``response`` (JSON) and ``segmentation`` (NIfTI bytes)."""
        row.update(response="", segmentation=b"")
        if row.get("status"):
            row["images"] = b""
            return row
        timeout_s = self.job.settings.cohorts.study_timeout_s
        future = self._executor.submit(self._run, row)
        try:
            response_json, segmentation = future.result(timeout=timeout_s)
        except FutureTimeout:
            # the thread cannot be stopped; later studies get a fresh one
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cohort-study")
            row.update(status="failed", error=f"timed out: analysis took over {timeout_s:g} s")
        except (InputError, ValidationError) as exc:
            row.update(status="input_error", error=f"invalid study: {exc}")
        except Exception as exc:  # any other fault of this study becomes its row
            logger.exception("a cohort study failed in analysis")
            row.update(status="failed", error=f"analysis failed: {type(exc).__name__}: {exc}")
        else:
            row.update(response=response_json, segmentation=segmentation)
        row["images"] = b""
        return row

    def _run(self, row: dict[str, Any]) -> tuple[str, bytes]:
        study = study_from_row(row, self.job.modalities)
        options = AnalyzeOptions(
            patient_id=row.get("patient_id") or None, study_date=row.get("study_date") or None
        )
        decode_ms = json.loads(row["timings"]).get("decode", 0.0) * 1000
        analysis = self.pipeline.run(study, options, input_timings_ms={"decode": decode_ms})
        study_id = analysis.response.study_id
        segmentation = self.pipeline.segmentation_path(study_id).read_bytes()
        # the answer /analyze gives (its timings include the store, unlike the stored copy)
        response_json = analysis.response.model_dump_json()
        if self._scratch is not None:  # the copy goes to --out; the scratch one is not kept
            shutil.rmtree(self.pipeline.artefacts.folder(study_id), ignore_errors=True)
        return response_json, segmentation


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
