"""Mirror-TTA disagreement in the sliding window, and probabilities on the input grid."""

from __future__ import annotations

import numpy as np
import pytest

from cerebrascan.inputs.study import Study
from cerebrascan.segmentation import segment_study
from runners.prediction import RunnerPrediction
from runners.sliding_window import (
    flip_disagreement,
    sliding_window_logits,
    sliding_window_predict,
    softmax,
)
from schemas.model_spec import ModelSpec

PATCH = (8, 8, 8)


def pointwise(tiles: np.ndarray) -> np.ndarray:
    """Flip-equivariant: logits depend only on the voxel's own values."""
    mean = tiles.mean(axis=1, keepdims=True)
    return np.concatenate([mean * k for k in range(4)], axis=1).astype(np.float32)


def position_dependent(tiles: np.ndarray) -> np.ndarray:
    """Not flip-equivariant: a ramp along the first spatial axis of the tile."""
    ramp = np.linspace(-3, 3, tiles.shape[2], dtype=np.float32)[None, None, :, None, None]
    base = tiles[:, :1] * 0
    return np.concatenate([base, base + ramp, base - ramp, tiles[:, :1]], axis=1)


def test_flip_disagreement_is_half_the_l1_gap_for_two_flips() -> None:
    first = np.zeros((2, 3, 3, 3), np.float32)
    first[0] = 50.0  # softmax ~ (1, 0)
    second = np.zeros((2, 3, 3, 3), np.float32)
    second[1] = 50.0  # softmax ~ (0, 1)
    np.testing.assert_allclose(flip_disagreement([first, second]), 1.0, atol=1e-6)
    np.testing.assert_allclose(flip_disagreement([first, first]), 0.0, atol=1e-7)
    with pytest.raises(ValueError, match="at least one prediction"):
        flip_disagreement([])


def test_disagreement_is_zero_for_a_flip_equivariant_network() -> None:
    volume = np.random.default_rng(0).normal(size=(2, 20, 13, 17)).astype(np.float32)
    output = sliding_window_predict(
        volume,
        pointwise,
        patch_size=PATCH,
        num_classes=4,
        mirror_axes=(0, 1, 2),
        batch_size=8,
        return_disagreement=True,
    )
    assert output.disagreement is not None
    assert output.disagreement.shape == volume.shape[1:]
    assert output.disagreement.dtype == np.float32
    np.testing.assert_allclose(output.disagreement, 0.0, atol=1e-5)


def test_disagreement_flags_a_flip_sensitive_network_and_leaves_logits_unchanged() -> None:
    volume = np.random.default_rng(1).normal(size=(1, 19, 16, 10)).astype(np.float32)
    kwargs = {"patch_size": PATCH, "num_classes": 4, "mirror_axes": (0, 1), "batch_size": 4}
    plain = sliding_window_logits(volume, position_dependent, **kwargs)
    output = sliding_window_predict(volume, position_dependent, return_disagreement=True, **kwargs)
    np.testing.assert_array_equal(output.logits, plain)
    assert output.disagreement is not None
    assert output.disagreement.min() >= 0
    assert output.disagreement.max() <= 2 * (1 - 1 / 4) + 1e-6
    assert output.disagreement.mean() > 0.1
    without = sliding_window_predict(volume, position_dependent, **kwargs)
    assert without.disagreement is None
    no_flips = sliding_window_predict(
        volume, position_dependent, patch_size=PATCH, num_classes=4, return_disagreement=True
    )
    assert no_flips.disagreement is None


class ToyRunner:
    """A runner over the sliding window with a fixed toy network (no model file)."""

    name = "toy"

    def __init__(self) -> None:
        self.spec = ModelSpec(
            architecture="toy", target_spacing_mm=(1.0, 1.0, 1.0), patch_size=PATCH
        )
        self.calls: list[dict[str, bool]] = []

    def predict(
        self, volume: np.ndarray, *, mirror_tta: bool, tta_disagreement: bool = False
    ) -> RunnerPrediction:
        self.calls.append({"mirror_tta": mirror_tta, "tta_disagreement": tta_disagreement})
        output = sliding_window_predict(
            volume,
            position_dependent,
            patch_size=PATCH,
            num_classes=4,
            mirror_axes=self.spec.mirror_axes if mirror_tta else (),
            return_disagreement=tta_disagreement,
        )
        return RunnerPrediction(softmax(output.logits), output.disagreement)


def _study() -> Study:
    images = np.zeros((4, 24, 22, 20), np.float32)
    images[:, 3:21, 4:18, 2:17] = np.random.default_rng(2).normal(5, 1, size=(4, 18, 14, 15))
    return Study(images=images, affine=np.eye(4), modalities=("t1n", "t1c", "t2w", "t2f"))


def test_segmentation_returns_probabilities_and_disagreement_on_the_input_grid() -> None:
    runner = ToyRunner()
    result = segment_study(
        _study(), runner, mirror_tta=True, keep_probabilities=True, tta_disagreement=True
    )
    assert runner.calls == [{"mirror_tta": True, "tta_disagreement": True}]
    probabilities = result.probabilities
    assert probabilities is not None
    assert probabilities.dtype == np.float16
    assert probabilities.shape == (4, 24, 22, 20)
    np.testing.assert_allclose(probabilities.astype(np.float32).sum(axis=0), 1.0, atol=3e-3)
    outside = np.ones((24, 22, 20), bool)
    outside[3:21, 4:18, 2:17] = False
    assert np.all(probabilities[0][outside] == 1)
    assert np.all(probabilities[1:][:, outside] == 0)
    inside_argmax = probabilities[:, 3:21, 4:18, 2:17].argmax(axis=0)
    np.testing.assert_array_equal(inside_argmax, result.labels[3:21, 4:18, 2:17])
    disagreement = result.tta_disagreement
    assert disagreement is not None
    assert disagreement.dtype == np.float16
    assert disagreement.shape == (24, 22, 20)
    assert np.all(disagreement[outside] == 0)
    assert disagreement[3:21, 4:18, 2:17].mean() > 0.1


def test_segmentation_computes_only_what_is_asked_for() -> None:
    runner = ToyRunner()
    result = segment_study(_study(), runner, mirror_tta=False, tta_disagreement=True)
    assert runner.calls == [{"mirror_tta": False, "tta_disagreement": False}]
    assert result.probabilities is None
    assert result.tta_disagreement is None
    assert result.labels.shape == (24, 22, 20)
