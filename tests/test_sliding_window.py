"""Sliding-window maths: tile placement, weights, equivalence with a direct forward pass."""

from __future__ import annotations

import numpy as np
import pytest

from runners.sliding_window import (
    gaussian_importance_map,
    mirror_combinations,
    pad_to_patch,
    sliding_window_logits,
    softmax,
    tile_starts,
)


def _conv_like_network(tiles: np.ndarray) -> np.ndarray:
    """A translation-equivariant stand-in: class k logit = k * channel mean (pointwise)."""
    mean = tiles.mean(axis=1, keepdims=True)
    return np.concatenate([mean * k for k in range(3)], axis=1).astype(np.float32)


def test_tile_starts_cover_the_image_and_end_at_the_edge() -> None:
    starts = tile_starts((100, 64, 130), (64, 64, 64), 0.5)
    assert starts[1] == [0]
    for axis_starts, size in zip(starts, (100, 64, 130)):
        assert axis_starts[0] == 0
        assert axis_starts[-1] + 64 == size
        gaps = np.diff(axis_starts)
        assert np.all(gaps <= 32)


def test_tile_starts_matches_nnunet_example() -> None:
    # nnU-Net: image 138, patch 128, step 0.5 -> 2 steps: [0, 10]
    assert tile_starts((138,), (128,), 0.5) == [[0, 10]]


@pytest.mark.parametrize("step", [0.0, 1.5])
def test_tile_starts_rejects_bad_step(step: float) -> None:
    with pytest.raises(ValueError, match="step"):
        tile_starts((100,), (64,), step)


def test_gaussian_map_peaks_at_centre_and_has_no_zeros() -> None:
    weights = gaussian_importance_map((16, 16, 16))
    assert weights.max() == pytest.approx(10.0)
    assert np.unravel_index(weights.argmax(), weights.shape) == (8, 8, 8)
    assert weights.min() > 0


def test_one_tile_equals_a_direct_forward_pass() -> None:
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(4, 16, 16, 16)).astype(np.float32)
    direct = _conv_like_network(volume[None])[0]
    windowed = sliding_window_logits(
        volume, _conv_like_network, patch_size=(16, 16, 16), num_classes=3
    )
    np.testing.assert_allclose(windowed, direct, rtol=1e-5, atol=1e-5)


def test_overlapping_tiles_of_a_pointwise_network_reproduce_it_everywhere() -> None:
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(2, 40, 23, 30)).astype(np.float32)
    windowed = sliding_window_logits(
        volume, _conv_like_network, patch_size=(16, 16, 16), num_classes=3, batch_size=3
    )
    np.testing.assert_allclose(windowed, _conv_like_network(volume[None])[0], atol=1e-5)


def test_volume_smaller_than_patch_is_padded_and_cropped_back() -> None:
    volume = np.ones((1, 10, 20, 5), dtype=np.float32)
    padded, unpad = pad_to_patch(volume, (16, 16, 16))
    assert padded.shape == (1, 16, 20, 16)
    assert padded[unpad].shape == volume.shape
    out = sliding_window_logits(volume, _conv_like_network, patch_size=(16, 16, 16), num_classes=3)
    assert out.shape == (3, 10, 20, 5)


def test_a_volume_one_voxel_short_of_the_patch_is_padded() -> None:
    """A one-voxel shortfall pads after only; it was once taken for no padding at all."""
    volume = np.ones((1, 16, 15, 16), dtype=np.float32)
    padded, unpad = pad_to_patch(volume, (16, 16, 16))
    assert padded.shape == (1, 16, 16, 16)
    assert padded[unpad].shape == volume.shape
    out = sliding_window_logits(volume, _conv_like_network, patch_size=(16, 16, 16), num_classes=3)
    assert out.shape == (3, 16, 15, 16)


def test_mirror_tta_batches_all_flips_and_undoes_them() -> None:
    calls: list[int] = []

    def asymmetric(tiles: np.ndarray) -> np.ndarray:
        calls.append(len(tiles))
        # logits depend on position, so a flip that is not undone would change the result
        ramp = np.arange(tiles.shape[2], dtype=np.float32)[None, None, :, None, None]
        return np.concatenate([tiles[:, :1] * 0 + ramp, tiles[:, :1]], axis=1)

    volume = np.random.default_rng(2).normal(size=(1, 16, 16, 16)).astype(np.float32)
    plain = sliding_window_logits(volume, asymmetric, patch_size=(16, 16, 16), num_classes=2)
    calls.clear()
    mirrored = sliding_window_logits(
        volume,
        asymmetric,
        patch_size=(16, 16, 16),
        num_classes=2,
        batch_size=8,
        mirror_axes=(0, 1, 2),
    )
    assert calls == [8]
    np.testing.assert_allclose(mirrored[1], plain[1], atol=1e-5)
    assert len(mirror_combinations((0, 1, 2))) == 8


def test_network_with_wrong_output_shape_is_reported() -> None:
    volume = np.zeros((1, 16, 16, 16), dtype=np.float32)
    with pytest.raises(ValueError, match="network returned shape"):
        sliding_window_logits(
            volume,
            lambda t: np.zeros((1, 2, 8, 8, 8), np.float32),
            patch_size=(16, 16, 16),
            num_classes=2,
        )


def test_softmax_sums_to_one() -> None:
    logits = np.random.default_rng(3).normal(size=(4, 5, 6, 7)).astype(np.float32) * 50
    probabilities = softmax(logits.copy())
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)
    assert np.array_equal(probabilities.argmax(0), logits.argmax(0))
