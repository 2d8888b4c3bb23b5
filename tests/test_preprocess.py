"""Crop / normalise / resample and their inverse: labels come back on the input grid."""

from __future__ import annotations

import numpy as np
import pytest

from cerebrascan.imaging.postprocess import labels_on_input_grid, probabilities_to_input_grid
from cerebrascan.imaging.preprocess import (
    nonzero_bounding_box,
    preprocess_images,
    resample_channels,
    shape_for_spacing,
    zscore_inside_mask,
)


def _head(shape: tuple[int, int, int]) -> np.ndarray:
    x, y, z = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    c = [s / 2 for s in shape]
    return (
        (x - c[0]) ** 2 / (0.3 * shape[0]) ** 2
        + (y - c[1]) ** 2 / (0.35 * shape[1]) ** 2
        + (z - c[2]) ** 2 / (0.3 * shape[2]) ** 2
    ) < 1


def test_bounding_box_is_tight() -> None:
    images = np.zeros((2, 20, 30, 40), np.float32)
    images[1, 3:7, 10:12, 5:39] = 1
    assert nonzero_bounding_box(images) == (slice(3, 7), slice(10, 12), slice(5, 39))


def test_bounding_box_of_empty_image_is_an_error() -> None:
    with pytest.raises(ValueError, match="every voxel"):
        nonzero_bounding_box(np.zeros((1, 4, 4, 4), np.float32))


def test_zscore_inside_mask_only() -> None:
    rng = np.random.default_rng(0)
    head = _head((30, 30, 30))
    images = np.stack([rng.normal(50, 5, head.shape) * head, rng.normal(7, 2, head.shape) * head])
    out = zscore_inside_mask(images.astype(np.float32))
    for channel in out:
        assert abs(channel[head].mean()) < 1e-4
        assert channel[head].std() == pytest.approx(1.0, abs=1e-3)
        assert np.all(channel[~head] == 0)


def test_shape_for_spacing_rounds_like_nnunet() -> None:
    assert shape_for_spacing((140, 172, 140), (1.0, 1.0, 1.0), (1.5, 1.5, 1.5)) == (93, 115, 93)
    assert shape_for_spacing((100, 100, 40), (0.5, 0.5, 3.0), (1.0, 1.0, 1.0)) == (50, 50, 120)


def test_resample_round_trip_preserves_a_smooth_image() -> None:
    x = np.linspace(0, 1, 61)
    smooth = (
        np.sin(3 * x)[:, None, None] * np.cos(2 * x)[None, :, None] * np.ones(41)[None, None, :]
    )
    volume = smooth[None].astype(np.float32)
    down = resample_channels(volume, (41, 41, 27), order=3)
    back = resample_channels(down, (61, 61, 41), order=1)
    assert back.shape == volume.shape
    assert np.abs(back - volume).max() < 0.05


def test_labels_come_back_on_the_exact_input_grid() -> None:
    shape = (60, 64, 50)
    head = _head(shape)
    images = np.stack([head * 100.0] * 4).astype(np.float32)
    tumour = np.zeros(shape, bool)
    tumour[25:35, 28:40, 20:30] = True
    images[1][tumour] = 300
    case = preprocess_images(images, (1.0, 1.0, 1.0), (1.5, 1.5, 1.5))
    assert case.input_shape == shape
    assert case.data.shape[1:] == shape_for_spacing(case.cropped_shape, (1, 1, 1), (1.5, 1.5, 1.5))
    # a perfect "network": probability of label ET where t1c is bright
    bright = (case.data[1] > case.data[0] + 1).astype(np.float32)
    probabilities = np.stack([1 - bright, np.zeros_like(bright), np.zeros_like(bright), bright])
    cropped = probabilities_to_input_grid(probabilities, case)
    labels = labels_on_input_grid(cropped, case, [0, 1, 2, 3])
    assert labels.shape == shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 3}
    et = labels == 3
    dice = 2 * (et & tumour).sum() / (et.sum() + tumour.sum())
    assert dice > 0.9
    assert not labels[~head].any()


def test_label_mapping_uses_output_labels() -> None:
    case = preprocess_images(np.ones((1, 8, 8, 8), np.float32), (1, 1, 1), (1, 1, 1))
    probabilities = np.zeros((3, 8, 8, 8), np.float32)
    probabilities[2] = 1.0
    labels = labels_on_input_grid(probabilities, case, [0, 2, 4])
    assert np.all(labels == 4)
    with pytest.raises(ValueError, match="probability channels"):
        labels_on_input_grid(probabilities, case, [0, 1])


def test_small_islands_are_removed_and_counted() -> None:
    from cerebrascan.imaging.postprocess import remove_small_components

    labels = np.zeros((40, 40, 40), np.uint8)
    labels[5:15, 5:15, 5:15] = 2  # 1 mL at 1 mm
    labels[8:12, 8:12, 8:12] = 3
    labels[30:33, 30:33, 30:33] = 1  # 27 voxels = 0.027 mL, far away
    labels[35, 2, 2] = 3  # a single voxel
    cleaned, removed = remove_small_components(labels, (1.0, 1.0, 1.0), 0.05)
    assert removed == 2
    assert not cleaned[30:, :, :].any() and not cleaned[35, 2, 2]
    assert np.array_equal(cleaned[:20, :20, :20], labels[:20, :20, :20])
    # with 2 mm voxels the 27-voxel island is 0.216 mL and stays
    _, removed_coarse = remove_small_components(labels, (2.0, 2.0, 2.0), 0.05)
    assert removed_coarse == 1
    unchanged, none_removed = remove_small_components(labels, (1.0, 1.0, 1.0), 0.0)
    assert none_removed == 0 and unchanged is labels
    with pytest.raises(ValueError, match="min_volume_ml"):
        remove_small_components(labels, (1.0, 1.0, 1.0), -1.0)


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize(
    ("source", "target"),
    [((37, 45, 29), (25, 30, 19)), ((25, 30, 19), (37, 45, 29)), ((20, 33, 16), (20, 22, 40))],
)
def test_separable_resampling_equals_ndimage_zoom(order, source, target) -> None:
    """The matrix-product resampling is ndimage.zoom (same spline, prefilter and edges)."""
    from scipy import ndimage

    rng = np.random.default_rng(order)
    images = ndimage.gaussian_filter(rng.normal(0, 1, (2, *source)), 1.5).astype(np.float32)
    images[:, :3] = 0.0  # a hard edge, where spline overshoot shows
    ours = resample_channels(images, target, order=order)
    reference = np.stack(
        [
            ndimage.zoom(
                channel,
                [n / o for n, o in zip(target, source)],
                order=order,
                mode="nearest",
                grid_mode=True,
            )
            for channel in images
        ]
    )
    assert ours.shape == reference.shape == (2, *target) and ours.dtype == np.float32
    assert float(np.abs(ours - reference).max()) <= 1e-5 * float(np.abs(reference).max())


def test_spacing_within_tolerance_is_not_resampled() -> None:
    images = np.stack([_head((30, 34, 28)) * 100.0] * 2).astype(np.float32)
    near = preprocess_images(images, (1.4995, 1.5, 1.5008), (1.5, 1.5, 1.5))
    assert near.data.shape[1:] == near.cropped_shape
    # just outside the tolerance: resampled (the long axis gains a voxel)
    assert shape_for_spacing((200, 34, 28), (1.51, 1.5, 1.5), (1.5, 1.5, 1.5)) == (201, 34, 28)


def test_float16_conversion_is_bitwise_numpy_cast() -> None:
    """Subnormal, zero, boundary, negative, overflowing and NaN values convert as the cast does."""
    from cerebrascan.imaging.postprocess import to_float16

    rng = np.random.default_rng(7)
    edges = [2**-25, 3 * 2**-25, 5 * 2**-25, 2**-14 * (1 - 2**-12), 2**-14, 65504, 7e4, 0.0, -0.0]
    values = np.concatenate(
        [
            rng.random(10_000),
            10.0 ** rng.uniform(-45, 0, 10_000),
            -(10.0 ** rng.uniform(-45, 0, 1_000)),
            np.array([*edges, np.nan, -np.inf]),
        ]
    ).astype(np.float32)
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).view(np.uint16)
        ours = to_float16(values).view(np.uint16)
        # written into a strided window of a larger volume, as the probabilities are pasted
        volume = np.full((3, values.size), 7.0, dtype=np.float16)
        to_float16(values, out=volume[1])
        window = np.zeros((values.size, 2), dtype=np.float16)
        to_float16(values, out=window[:, 1])
    assert np.array_equal(ours, expected)
    assert np.array_equal(volume[1].view(np.uint16), expected)
    assert np.all(volume[[0, 2]] == 7.0)
    assert np.array_equal(window[:, 1].view(np.uint16), expected) and not window[:, 0].any()
    with pytest.raises(ValueError, match="float16"):
        to_float16(values, out=np.empty(values.size, dtype=np.float32))  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["onnxruntime", "numpy"])
def test_float16_conversion_of_a_volume_goes_slab_by_slab_bit_for_bit(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probability-like volume larger than one slab (several slabs and a partial last one),
    written into a crop of a larger volume from another thread: the numpy cast, bit for bit,
    through ONNX Runtime's Cast kernel and through the numpy path it falls back to."""
    import threading

    from cerebrascan.imaging import postprocess
    from cerebrascan.imaging.postprocess import SLAB_ELEMENTS, to_float16

    if path == "numpy":
        monkeypatch.setattr(postprocess, "_hardware_cast", lambda: None)
    else:  # onnxruntime is a dependency: it must be usable, or every study pays ~20 ms a channel
        assert postprocess._hardware_cast() is not None

    rng = np.random.default_rng(11)
    shape = (70, 90, 101)  # 9090 voxels a plane: 28 planes a slab, 2 slabs and a partial one
    assert np.prod(shape) > 2 * SLAB_ELEMENTS
    values = (10.0 ** rng.uniform(-12, 0, shape)).astype(np.float32)
    values[rng.random(shape) < 0.3] *= -1e-3
    expected = values.astype(np.float16).view(np.uint16)
    volume = np.zeros((2, 72, 96, 110), dtype=np.float16)
    crop = (1, slice(1, 71), slice(3, 93), slice(4, 105))
    worker = threading.Thread(target=to_float16, args=(values,), kwargs={"out": volume[crop]})
    worker.start()
    worker.join()
    assert np.array_equal(volume[crop].view(np.uint16), expected)
    volume[crop] = 0
    assert not volume.any()  # nothing written outside the crop
    assert np.array_equal(to_float16(values).view(np.uint16), expected)


def test_float16_hardware_cast_matches_numpy_on_every_kind_of_value() -> None:
    """ONNX Runtime's Cast on a volume of every kind of value (ties to even, subnormals, the
    smallest normal, overflow, signed zeros, infinities, NaN): numpy's cast bit for bit."""
    from cerebrascan.imaging.postprocess import HARDWARE_CAST_MIN_ELEMENTS, to_float16

    rng = np.random.default_rng(13)
    ties = (np.arange(1, 2049, dtype=np.float32) + 0.5) * 2**-24  # halfway between subnormals
    values = np.concatenate(
        [
            10.0 ** rng.uniform(-45, 5, 100_000),
            -(10.0 ** rng.uniform(-45, 5, 20_000)),
            ties,
            ties * 2**10,  # halfway between normals
            [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 65504, 65520, 65519.99],
        ]
    ).astype(np.float32)
    assert values.size >= HARDWARE_CAST_MIN_ELEMENTS
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).view(np.uint16)
    assert np.array_equal(to_float16(values).view(np.uint16), expected)


def test_the_shipped_cast_model_is_the_one_onnx_builds() -> None:
    """The serialised Cast model in postprocess.py (the bento has no onnx package) is exactly
    what onnx's helpers make of its description."""
    from onnx import TensorProto, helper

    from cerebrascan.imaging.postprocess import CAST_TO_FLOAT16_ONNX

    graph = helper.make_graph(
        [helper.make_node("Cast", ["values"], ["halves"], to=TensorProto.FLOAT16)],
        "to_float16",
        [helper.make_tensor_value_info("values", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("halves", TensorProto.FLOAT16, None)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="cerebrascan"
    )
    model.ir_version = 9
    assert model.SerializeToString() == CAST_TO_FLOAT16_ONNX


@pytest.mark.parametrize(
    ("shape", "spacing", "output_labels"),
    [
        ((40, 44, 36), (1.0, 1.0, 1.0), [0, 2, 1, 3]),  # every axis resampled, labels permuted
        ((40, 44, 36), (1.5, 1.5, 1.5), [0, 1, 2, 3]),  # nothing resampled, labels as channels
        ((70, 30, 20), (1.0, 1.5, 1.5), [3, 0, 1, 2]),  # the first axis only, several blocks
    ],
)
def test_channel_by_channel_postprocess_equals_the_whole_array_path(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], output_labels: list[int]
) -> None:
    """Labels and float16 probabilities streamed plane block by plane block are the three-step
    path's, bit for bit (ties to the first channel included)."""
    from cerebrascan.imaging.postprocess import (
        labels_and_probabilities_on_input_grid,
        probabilities_on_input_grid,
    )

    images = np.stack([_head(shape) * 100.0] * 4).astype(np.float32)
    case = preprocess_images(images, spacing, (1.5, 1.5, 1.5))
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 4, (4, *case.data.shape[1:])).astype(np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=0)
    probabilities[2, :3] = probabilities[1, :3]  # exact ties
    labels, kept = labels_and_probabilities_on_input_grid(
        probabilities, case, output_labels, keep_probabilities=True
    )
    cropped = probabilities_to_input_grid(probabilities, case)
    assert np.array_equal(labels, labels_on_input_grid(cropped, case, output_labels))
    expected = probabilities_on_input_grid(cropped, case, output_labels)
    assert kept is not None and np.array_equal(kept.view(np.uint16), expected.view(np.uint16))
    alone, none = labels_and_probabilities_on_input_grid(
        probabilities, case, output_labels, keep_probabilities=False
    )
    assert none is None and np.array_equal(alone, labels)
    with pytest.raises(ValueError, match="output labels"):
        labels_and_probabilities_on_input_grid(
            probabilities, case, [0, 1], keep_probabilities=False
        )


def test_mask_bounding_box_is_the_projections_extent() -> None:
    from cerebrascan.imaging.preprocess import mask_bounding_box

    rng = np.random.default_rng(5)
    for _ in range(20):
        mask = np.zeros((17, 23, 11), dtype=bool)
        corner = rng.integers(0, 8, 3)
        size = rng.integers(1, 6, 3)
        mask[tuple(slice(c, c + n) for c, n in zip(corner, size, strict=True))] = (
            rng.random(tuple(size)) < 0.3
        )
        if not mask.any():
            assert mask_bounding_box(mask) is None
            continue
        expected = tuple(
            slice(int(idx[0]), int(idx[-1]) + 1)
            for idx in (
                np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
                for axis in range(3)
            )
        )
        assert mask_bounding_box(mask) == expected
    assert mask_bounding_box(np.zeros((3, 3, 3), dtype=bool)) is None


def test_zscore_by_slabs_is_the_whole_channel_arithmetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slab by slab (several slabs per channel here) and from a strided crop, the z-score is
    nnU-Net's whole-array arithmetic bit for bit."""
    from cerebrascan.imaging import preprocess

    monkeypatch.setattr(preprocess, "ZSCORE_SLAB_BYTES", 4 * 9 * 13 * 3)  # 3 planes a slab
    rng = np.random.default_rng(11)
    images = rng.normal(300, 40, (3, 20, 9, 13)).astype(np.float32)
    images[:, :, :2] = 0  # outside the head in every channel
    images[1, 5, 5, 5] = 0  # zero in one channel only: still inside
    crop = images[:, 1:19]  # a strided view, as preprocessing passes it
    mask = np.any(crop != 0, axis=0)
    out = zscore_inside_mask(crop, mask)
    for channel in range(3):
        values = np.ascontiguousarray(crop[channel])[mask]
        mean = float(values.mean())
        std = float(values.std(mean=np.float32(mean)))
        expected = np.ascontiguousarray(crop[channel]) - mean
        expected = expected / max(std, 1e-8)
        expected[~mask] = 0.0
        assert np.array_equal(
            out[channel].view(np.uint32), expected.astype(np.float32).view(np.uint32)
        )
