"""A process storing studies through the real pipeline, for tests/test_faults.py.

It checks and completes small studies (``AnalysisPipeline.plan`` then ``.complete``: analyzers,
artefact files, the record) in a data folder of its own, with a label map standing in for the
network's (no runner: what is under test is the write). Run as::

    python -m tests.fault_writer DATA_DIR loop            # studies back to back until killed
    python -m tests.fault_writer DATA_DIR one SEED        # one study; prints its JSON outcome
    python -m tests.fault_writer DATA_DIR full SEED BYTES # one study with RLIMIT_FSIZE=BYTES,
                                                          # then the same again without it

``loop`` writes the seed of the study in flight to ``DATA_DIR/inflight`` before storing it.
The MLflow registry is the session's (``CEREBRASCAN_MLFLOW_TRACKING_URI``); only the
``volumetrics`` analyzer runs (``CEREBRASCAN_PLUGINS__ALLOW``), so a study takes a moment.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
from datetime import date
from pathlib import Path

import numpy as np

from cerebrascan.errors import StorageFullError
from cerebrascan.inputs.study import Study
from cerebrascan.pipeline import AnalysisPipeline, RunnerInfo, StudyPlan
from cerebrascan.registry import resolve_model
from cerebrascan.segmentation import SegmentationResult
from cerebrascan.settings import Settings
from schemas.analysis import AnalyzeOptions

SHAPE = (48, 48, 40)
PATIENT_ID = "PAT-FAULT-0001"
RUNNER = RunnerInfo(
    name="label map of the fault test", providers=[], precision="fp32", precision_note=None
)


def study_of(seed: int, modalities: tuple[str, ...]) -> tuple[Study, SegmentationResult]:
    """A small study and a label map on its grid; the seed makes its content (and, with the
    patient id, its study id) distinct."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    radius = sum(g**2 for g in grid)
    head = radius < 0.8
    images = np.stack([(rng.normal(100, 10, SHAPE) * head).astype(np.float32) for _ in modalities])
    labels = np.zeros(SHAPE, np.uint8)
    labels[radius < 0.05] = 3
    labels[(radius >= 0.05) & (radius < 0.12)] = 1
    labels[(radius >= 0.12) & (radius < 0.2)] = 2
    labels[rng.random(SHAPE) < 0.02] = 0  # noise, so the label map does not compress to nothing
    study = Study(images=images, affine=np.diag([1.0, 1.0, 1.2, 1.0]), modalities=modalities)
    return study, SegmentationResult(labels=labels)


def store_one(pipeline: AnalysisPipeline, seed: int) -> str:
    """Plan and complete the study of ``seed``; its id."""
    study, segmentation = study_of(seed, tuple(pipeline.model.spec.modalities))
    options = AnalyzeOptions(patient_id=PATIENT_ID, study_date=date(2024, 1, 1 + seed % 28))
    plan = pipeline.plan(study, options, pipeline.model)
    if not isinstance(plan, StudyPlan):  # stored before: posting it again is idempotent
        return plan.response.study_id
    return pipeline.complete(study, plan, segmentation, RUNNER).response.study_id


def main() -> None:
    data_dir, mode = Path(sys.argv[1]), sys.argv[2]
    settings = Settings(data_dir=data_dir)
    pipeline = AnalysisPipeline(settings, resolve_model(settings), with_runner=False)
    if mode == "loop":
        seed = 0
        while True:
            (data_dir / "inflight").write_text(str(seed))
            store_one(pipeline, seed)
            seed += 1
    seed = int(sys.argv[3])
    if mode == "one":
        print(json.dumps({"study_id": store_one(pipeline, seed)}))
        return
    # "full": the kernel refuses writes past BYTES (EFBIG), as a full disk refuses with ENOSPC
    study, segmentation = study_of(seed, tuple(pipeline.model.spec.modalities))
    options = AnalyzeOptions(patient_id=PATIENT_ID, study_date=date(2024, 1, 1 + seed % 28))
    plan = pipeline.plan(study, options, pipeline.model)
    assert isinstance(plan, StudyPlan), "the data folder must be fresh"
    limit = int(sys.argv[4])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the first refused write kills us
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    outcome: dict[str, object] = {"study_id": plan.study_id}
    try:
        pipeline.complete(study, plan, segmentation, RUNNER)
        outcome["refused"] = None
    except StorageFullError as exc:
        outcome.update(refused=str(exc), status_code=exc.status_code)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    root = pipeline.artefacts.root
    outcome["files_after_refusal"] = (
        sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())
        if root.exists()
        else []
    )
    outcome["recorded_after_refusal"] = pipeline.records.get_study(plan.study_id) is not None
    outcome["retry_study_id"] = store_one(pipeline, seed)
    print(json.dumps(outcome))


if __name__ == "__main__":
    main()
