"""Cross-case tile batching: several volumes' tiles in shared network calls give, per case, what
one case at a time gives; a bad case fails alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.ndimage import uniform_filter

from cerebrascan.serving.runner_service import CrossCaseRunner, RunnerCase
from runners.cross_case_batching import (
    CaseRequest,
    TileJob,
    cross_case_sliding_window,
    pack_batches,
    plan_tile_jobs,
)
from runners.onnx_runner import OnnxSegmentationRunner
from runners.settings import RunnerSettings
from runners.sliding_window import sliding_window_predict
from schemas.model_spec import ModelSpec

PATCH = (16, 16, 16)
CLASSES = 3
CHANNELS = 2
RNG = np.random.default_rng(20261127)
MIXING = RNG.normal(size=(CLASSES, CHANNELS)).astype(np.float32)
RAMP = np.linspace(-1, 1, PATCH[0], dtype=np.float32)[:, None, None] * np.ones(PATCH, np.float32)


def toy_network(tiles: np.ndarray) -> np.ndarray:
    """A deterministic, position-dependent stand-in network: per-tile, so batch-independent."""
    assert tiles.dtype == np.float32 and tiles.shape[1:] == (CHANNELS, *PATCH)
    smoothed = uniform_filter(tiles, size=(1, 1, 3, 3, 3), mode="nearest")
    logits = np.einsum("kc,bcxyz->bkxyz", MIXING, smoothed)
    logits[:, 0] += RAMP
    return logits.astype(np.float32)


def volume(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(CHANNELS, *shape)).astype(np.float32)


def one_at_a_time(request: CaseRequest, batch_size: int):
    return sliding_window_predict(
        request.volume,
        toy_network,
        patch_size=PATCH,
        num_classes=CLASSES,
        step=0.5,
        batch_size=batch_size,
        mirror_axes=request.mirror_axes,
        return_disagreement=request.return_disagreement,
    )


@pytest.mark.parametrize("batch_size", [1, 3, 8, 16])
def test_mixed_batches_give_each_case_its_own_result(batch_size: int) -> None:
    cases = [
        CaseRequest(volume(PATCH, 1)),  # exactly one tile
        CaseRequest(volume((20, 30, 17), 2), mirror_axes=(0, 1, 2), return_disagreement=True),
        CaseRequest(volume((12, 40, 16), 3)),  # smaller than the patch on one axis: padded
        CaseRequest(volume((33, 18, 25), 4), mirror_axes=(1,)),
    ]
    result = cross_case_sliding_window(
        cases,
        toy_network,
        patch_size=PATCH,
        num_classes=CLASSES,
        channels=CHANNELS,
        step=0.5,
        batch_size=batch_size,
    )
    assert result.errors == [None] * len(cases)
    for request, output in zip(cases, result.outputs):
        assert output is not None
        alone = one_at_a_time(request, batch_size)
        assert output.logits.shape == (CLASSES, *request.volume.shape[1:])
        np.testing.assert_array_equal(output.logits, alone.logits)
        if alone.disagreement is None:
            assert output.disagreement is None
        else:
            assert output.disagreement is not None
            np.testing.assert_array_equal(output.disagreement, alone.disagreement)
    assert max(result.batch_sizes) <= max(batch_size, 8)  # 8 flips of one tile travel together
    if batch_size >= 3:
        assert result.mixed_batches > 0


def test_pack_batches_fills_calls_in_order_without_splitting_a_tile() -> None:
    shapes = [(16, 16, 16), (24, 16, 16), (16, 16, 16)]
    flips = [[()], [(), (0,)], [()]]
    jobs = plan_tile_jobs(shapes, PATCH, 0.5, flips)
    assert [job.case for job in jobs] == [0, 1, 1, 2]  # 24 voxels: two 16-tiles
    batches = pack_batches(jobs, batch_size=3)
    assert [job for batch in batches for job in batch] == jobs
    assert all(sum(job.images for job in batch) <= 3 for batch in batches)
    big = TileJob(case=0, window=jobs[0].window, flips=tuple([()] * 8))
    assert pack_batches([jobs[0], big, jobs[0]], batch_size=4) == [[jobs[0]], [big], [jobs[0]]]
    with pytest.raises(ValueError, match="batch_size"):
        pack_batches(jobs, batch_size=0)


def test_bad_volumes_fail_alone() -> None:
    good = CaseRequest(volume((20, 20, 20), 5))
    nan = volume((20, 20, 20), 6)
    nan[1, 3, 3, 3] = np.nan
    wrong_channels = np.zeros((CHANNELS + 1, 20, 20, 20), np.float32)
    flat = np.zeros((20, 20, 20), np.float32)
    cases = [CaseRequest(nan), good, CaseRequest(wrong_channels), CaseRequest(flat), good]
    result = cross_case_sliding_window(
        cases,
        toy_network,
        patch_size=PATCH,
        num_classes=CLASSES,
        channels=CHANNELS,
        batch_size=4,
    )
    assert result.errors[0] is not None and "NaN" in result.errors[0]
    assert result.errors[2] is not None and "3 channels" in result.errors[2]
    assert result.errors[3] is not None and "4-D" in result.errors[3]
    assert result.outputs[0] is None and result.outputs[2] is None and result.outputs[3] is None
    expected = one_at_a_time(good, 4).logits
    for index in (1, 4):
        assert result.errors[index] is None
        np.testing.assert_array_equal(result.outputs[index].logits, expected)


def test_network_failure_on_one_case_fails_only_that_case() -> None:
    """A test double of a fault we cannot cause with the real network: it raises whenever a
    batch holds a tile of the 'poison' case (all values 7.0), like a kernel failing on it."""

    def flaky_network(tiles: np.ndarray) -> np.ndarray:
        if np.any(np.all(tiles == 7.0, axis=(1, 2, 3, 4))):
            raise RuntimeError("kernel failed")
        return toy_network(tiles)

    poison = CaseRequest(np.full((CHANNELS, 24, 24, 24), 7.0, np.float32))
    before = CaseRequest(volume((24, 20, 20), 8))
    after = CaseRequest(volume((20, 28, 20), 9))
    result = cross_case_sliding_window(
        [before, poison, after],
        flaky_network,
        patch_size=PATCH,
        num_classes=CLASSES,
        channels=CHANNELS,
        batch_size=6,
    )
    assert result.mixed_batches > 0
    assert result.errors[1] is not None and "kernel failed" in result.errors[1]
    assert result.outputs[1] is None
    for index, request in ((0, before), (2, after)):
        assert result.errors[index] is None
        np.testing.assert_array_equal(
            result.outputs[index].logits, one_at_a_time(request, 6).logits
        )


@pytest.fixture(scope="module")
def onnx_runner() -> OnnxSegmentationRunner:
    folder = Path(__file__).resolve().parent.parent / "models" / "default"
    spec = ModelSpec.model_validate_json((folder / "model_spec.json").read_text())
    return OnnxSegmentationRunner(
        folder / "model.onnx", spec, RunnerSettings(tile_batch_size=4, intra_op_threads=1)
    )


def test_real_network_mixed_cases_match_one_case_at_a_time(onnx_runner) -> None:
    """The default ONNX model through :class:`CrossCaseRunner`: probabilities per case equal
    the in-process runner's (ORT may round differently with another batch size: 1e-5)."""
    engine = CrossCaseRunner(
        onnx_runner, onnx_runner.spec, tile_step=0.5, tile_batch_size=4, model_version="1"
    )
    volumes = [volume((64, 72, 64), 10)[:1].repeat(4, 0), volume((66, 64, 64), 11)[:1].repeat(4, 0)]
    bad = volumes[0][:3]
    cases = [
        RunnerCase(volume=volumes[0]),
        RunnerCase(volume=bad),
        RunnerCase(volume=volumes[1], mirror_tta=True, tta_disagreement=True),
        RunnerCase(volume=volumes[1], model_version="2"),
    ]
    results = engine.segment(cases)
    assert results[1].error_kind == "input" and "3 channels" in (results[1].error or "")
    assert results[3].error_kind == "runner" and "version" in (results[3].error or "")
    for index, mirror in ((0, False), (2, True)):
        result = results[index]
        assert result.error is None and result.batch_cases == 4
        assert result.probabilities is not None and result.probabilities.dtype == np.float16
        alone = onnx_runner.predict(cases[index].volume, mirror_tta=mirror, tta_disagreement=mirror)
        np.testing.assert_allclose(
            result.probabilities.astype(np.float32), alone.probabilities, atol=1e-3
        )
        labels = np.argmax(result.probabilities, axis=0)
        agreement = np.mean(labels == np.argmax(alone.probabilities, axis=0))
        assert agreement > 0.9999
    assert results[2].tta_disagreement is not None


@pytest.fixture(scope="module")
def study_alone(onnx_runner, phantom_case: Path) -> tuple[Any, np.ndarray]:
    """The session phantom as a Study and its labels from the in-process runner (computed once
    for both wire dtypes)."""
    from cerebrascan.inputs.case_folder import modality_path
    from cerebrascan.inputs.nifti import assemble_study, decode_nifti
    from cerebrascan.segmentation import segment_study

    spec = onnx_runner.spec
    volumes = {
        m: decode_nifti(modality_path(phantom_case, m), field=m, max_voxels=400**3)
        for m in spec.modalities
    }
    study = assemble_study(volumes, tuple(spec.modalities))
    return study, segment_study(study, onnx_runner, mirror_tta=False).labels


@pytest.mark.slow
@pytest.mark.parametrize("probability_dtype", ["float32", "float16"])
def test_runner_service_path_keeps_the_in_process_labels(
    onnx_runner, study_alone: tuple[Any, np.ndarray], probability_dtype: str
) -> None:
    """A phantom study through :class:`RemoteSegmentationRunner` and the runner service's
    engine (the transport between them pickles losslessly, so it is left out) against the
    in-process runner: float32 on the wire gives the same labels; float16 probabilities flip
    at most a handful of near-tie voxels."""
    from cerebrascan.segmentation import segment_study
    from cerebrascan.serving.runner_service import RemoteSegmentationRunner

    spec = onnx_runner.spec
    engine = CrossCaseRunner(onnx_runner, spec, tile_step=0.5, tile_batch_size=4, model_version="1")
    remote = RemoteSegmentationRunner(
        engine,
        spec,
        model_name="m",
        model_version="1",
        volume_dtype="float32",
        probability_dtype=probability_dtype,
        engine="onnxruntime",
        providers=list(onnx_runner.providers),
        precision="fp32",
    )
    study, alone_labels = study_alone
    served = segment_study(study, remote, mirror_tta=False)
    differing = int(np.count_nonzero(alone_labels != served.labels))
    if probability_dtype == "float32":
        assert differing == 0
    else:
        assert differing <= 1e-4 * np.count_nonzero(alone_labels), differing
    assert remote.name == "onnxruntime (runner service)"
