"""``AnalysisPipeline.run``: the one entry every transport calls with a decoded ``Study``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cerebrascan.errors import InputError
from cerebrascan.inputs.case_folder import read_case
from cerebrascan.inputs.study import Study
from cerebrascan.pipeline import AnalysisPipeline
from cerebrascan.registry import resolve_model
from cerebrascan.settings import Settings
from schemas.analysis import AnalyzeOptions


@pytest.fixture(scope="module")
def pipeline(registered_default_model: str) -> AnalysisPipeline:
    settings = Settings()
    return AnalysisPipeline(settings, resolve_model(settings))


def test_run_answers_with_the_labels_it_stored(
    pipeline: AnalysisPipeline, phantom_case: Path
) -> None:
    study = read_case(phantom_case)
    analysis = pipeline.run(study, AnalyzeOptions(), input_timings_ms={"decode": 12.5})
    stored, affine = pipeline.artefacts.load_labels(analysis.response.study_id)
    assert analysis.labels.dtype == np.uint8 and analysis.labels.shape == study.shape
    np.testing.assert_array_equal(analysis.labels, stored)
    np.testing.assert_allclose(affine, study.affine, atol=1e-4)
    # the transport's own stage time is reported first, then the pipeline's stages
    assert list(analysis.response.timings_ms)[:2] == ["decode", "preprocess"]
    assert analysis.response.timings_ms["decode"] == 12.5
    assert set(np.unique(analysis.labels)) <= {0, 1, 2, 3}


def test_run_refuses_modalities_the_model_does_not_take(
    pipeline: AnalysisPipeline, phantom_case: Path
) -> None:
    study = read_case(phantom_case)
    swapped = Study(
        images=study.images[::-1].copy(),
        affine=study.affine,
        modalities=tuple(reversed(study.modalities)),
    )
    with pytest.raises(InputError) as error:
        pipeline.run(swapped, AnalyzeOptions())
    assert error.value.status_code == 400
    assert "['t2f', 't2w', 't1c', 't1n']" in str(error.value)
