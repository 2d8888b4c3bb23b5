"""The array pool: blocks reused only when nothing can reach them, bounded, thread-safe; and the
postprocessing that writes into reused (dirty) blocks gives the same values as fresh memory."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cerebrascan.imaging import array_pool
from cerebrascan.imaging.array_pool import ArrayPool
from cerebrascan.imaging.postprocess import fill_outside, labels_and_probabilities_on_input_grid
from cerebrascan.imaging.preprocess import preprocess_images

MiB = 1 << 20


def small_pool(max_mb: int = 64) -> ArrayPool:
    """A pool that takes arrays from 1 MiB (the default floor is 32 MiB)."""
    return ArrayPool(max_mb * MiB, min_bytes=MiB)


def test_an_off_pool_hands_out_plain_numpy_arrays() -> None:
    pool = ArrayPool(0, min_bytes=0)
    array = pool.zeros((512, 1024), np.float32)
    assert array.flags.owndata and not array.any()
    assert pool.stats().mapped == 0


def test_small_arrays_bypass_the_pool() -> None:
    pool = small_pool()
    array = pool.empty((100,), np.float32)
    assert array.flags.owndata
    assert pool.stats().mapped == 0


def test_a_block_is_reused_once_its_array_is_gone() -> None:
    pool = small_pool()
    first = pool.empty((4, MiB), np.float32)
    assert not first.flags.owndata and first.flags.c_contiguous and first.flags.writeable
    first[...] = 7.0
    del first
    assert pool.stats().free_bytes >= 16 * MiB
    second = pool.empty((4, MiB), np.float32)
    stats = pool.stats()
    assert (stats.mapped, stats.reused) == (1, 1)
    assert stats.in_use_bytes >= second.nbytes and stats.free_bytes == 0


def test_a_live_view_keeps_its_block_out_of_the_pool() -> None:
    pool = small_pool()
    array = pool.empty((4, MiB), np.float32)
    view = array[1:].view(np.uint32).reshape(-1)[5:]
    view[...] = 123
    del array
    other = pool.empty((4, MiB), np.float32)
    assert pool.stats().mapped == 2  # the viewed block was not handed out again
    other[...] = 0.0
    assert (view == 123).all()
    assert pool.stats().free_bytes == 0
    del view  # the last reference: now the block comes back
    assert pool.stats().free_bytes > 0


def test_zeros_from_a_dirty_block_are_zero() -> None:
    pool = small_pool()
    dirty = pool.empty((3, MiB), np.float32)
    dirty.fill(np.nan)
    del dirty
    clean = pool.zeros((3, MiB), np.float32)
    assert pool.stats().reused == 1
    assert not clean.any()


def test_a_much_smaller_array_does_not_take_a_large_block() -> None:
    pool = small_pool()
    large = pool.empty((16, MiB), np.uint8)
    del large
    pool.empty((2, MiB), np.uint8)
    assert (pool.stats().mapped, pool.stats().reused) == (2, 0)


def test_free_blocks_stay_under_the_bound_oldest_given_back_first() -> None:
    pool = small_pool(max_mb=8)
    arrays = [pool.empty((3 * MiB,), np.uint8) for _ in range(4)]  # 4 MiB blocks
    del arrays
    stats = pool.stats()
    assert stats.free_bytes <= 8 * MiB and stats.unmapped == 2 and stats.in_use_bytes == 0
    too_large = pool.empty((10 * MiB,), np.uint8)  # over the bound on its own
    del too_large
    assert pool.stats().unmapped == 3 and pool.stats().free_bytes <= 8 * MiB
    pool.configure(0)
    assert pool.stats().free_bytes == 0
    assert pool.empty((3 * MiB,), np.uint8).flags.owndata  # off now


def test_bad_sizes_are_refused_with_the_value() -> None:
    with pytest.raises(ValueError, match="max_bytes must be >= 0, got -1"):
        ArrayPool(-1)
    with pytest.raises(ValueError, match="min_bytes must be >= 0, got -5"):
        ArrayPool(0, min_bytes=-5)
    with pytest.raises(ValueError, match=r"negative dimension in shape \(3, -2\)"):
        small_pool().empty((3, -2), np.float32)


def test_an_array_freed_while_the_pool_is_locked_is_taken_in_later() -> None:
    """A finalizer can run inside the pool's own locked section (a garbage collection there):
    it must queue its block, not wait for the lock."""
    pool = small_pool()
    array = pool.empty((2, MiB), np.float32)
    with pool._lock:  # the fault cannot be caused on demand otherwise
        del array  # the finalizer runs now, in this thread, with the lock held
    stats = pool.stats()
    assert stats.in_use_bytes == 0 and stats.free_bytes > 0


def test_concurrent_use_keeps_the_books_balanced() -> None:
    pool = small_pool(max_mb=24)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(60):
                size = int(rng.integers(1, 5)) * MiB
                array = pool.zeros((size,), np.uint8)
                if array.any():
                    raise AssertionError("zeros() handed out a dirty block")
                array.fill(seed + 1)
                if not (array == seed + 1).all():
                    raise AssertionError("another thread wrote into this block")
                del array
        except AssertionError as exc:  # collected for the main thread to assert on
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    stats = pool.stats()
    assert stats.in_use_bytes == 0 and 0 < stats.free_bytes <= 24 * MiB
    assert stats.reused > 0


def test_fill_outside_leaves_the_box_and_fills_the_rest() -> None:
    volume = np.full((7, 9, 5), -1.0, dtype=np.float32)
    box = (slice(2, 5), slice(0, 9), slice(1, 3))
    fill_outside(volume, box, 3.0)
    expected = np.full(volume.shape, 3.0, dtype=np.float32)
    expected[box] = -1.0
    assert np.array_equal(volume, expected)
    with pytest.raises(ValueError, match="not one unit-step slice per axis"):
        fill_outside(volume, (slice(0, 3, 2), slice(None), slice(None)), 0.0)
    with pytest.raises(ValueError, match="not one unit-step slice per axis"):
        fill_outside(volume, (slice(0, 3),), 0.0)


def test_postprocess_into_dirty_pool_blocks_equals_fresh_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Labels and probabilities written into reused blocks full of NaN are those written into
    fresh zeroed memory, bit for bit: every voxel outside the crop is set, not assumed zero."""
    shape = (100, 110, 96)  # probabilities: 4 x 2.1 MB float16 -> pooled from 1 MiB
    head = np.zeros(shape, dtype=np.float32)
    head[20:85, 15:100, 10:80] = 1.0
    images = np.stack([head * (100.0 + 10 * c) for c in range(4)]).astype(np.float32)
    case = preprocess_images(images, (1.0, 1.0, 1.0), (1.5, 1.5, 1.5))
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 4, (4, *case.data.shape[1:])).astype(np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=0)
    fresh_labels, fresh_probabilities = labels_and_probabilities_on_input_grid(
        probabilities, case, [0, 1, 2, 3], keep_probabilities=True
    )
    assert fresh_probabilities is not None
    pool = small_pool(max_mb=256)
    monkeypatch.setattr(array_pool, "_default_pool", pool)
    for nbytes in (fresh_probabilities.nbytes, fresh_labels.nbytes):
        dirty = pool.empty((nbytes,), np.uint8)
        dirty.fill(0xFF)  # NaN as float16, 255 as a label
        del dirty
    labels, kept = labels_and_probabilities_on_input_grid(
        probabilities, case, [0, 1, 2, 3], keep_probabilities=True
    )
    assert pool.stats().reused == 2
    assert kept is not None and not kept.flags.owndata
    assert np.array_equal(labels, fresh_labels)
    assert np.array_equal(kept.view(np.uint16), fresh_probabilities.view(np.uint16))
