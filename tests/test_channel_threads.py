"""The shared channel threads: results in order, errors raised, no deadlock when nested."""

from __future__ import annotations

import threading

import pytest

from cerebrascan.imaging.channel_threads import (
    THREAD_NAME_PREFIX,
    channel_thread_count,
    map_channels,
)


def test_results_come_in_item_order_from_the_shared_threads() -> None:
    names: list[str] = []

    def square(value: int) -> int:
        names.append(threading.current_thread().name)
        return value * value

    assert list(map_channels(square, range(9))) == [v * v for v in range(9)]
    assert names and all(name.startswith(THREAD_NAME_PREFIX) for name in names)
    assert 1 <= channel_thread_count() <= 8


def test_an_error_in_a_channel_is_raised_to_the_caller() -> None:
    def fail_on_two(value: int) -> int:
        if value == 2:
            raise ValueError(f"channel {value} is bad")
        return value

    results = map_channels(fail_on_two, range(4))
    assert next(results) == 0 and next(results) == 1
    with pytest.raises(ValueError, match="channel 2 is bad"):
        next(results)


def test_a_nested_map_runs_in_the_calling_thread_instead_of_waiting() -> None:
    """More nested maps than threads: each would wait for a free thread forever if it queued."""

    def outer(value: int) -> tuple[int, str, list[str]]:
        names = list(map_channels(lambda _: threading.current_thread().name, range(3)))
        return value, threading.current_thread().name, names

    results = list(map_channels(outer, range(channel_thread_count() + 2)))
    assert [value for value, _, _ in results] == list(range(channel_thread_count() + 2))
    for _, outer_thread, inner_threads in results:
        assert inner_threads == [outer_thread] * 3


def _work_in_a_forked_child() -> None:
    """Exit 0 only if the channel threads, the array pool and the float16 cast all work."""
    import numpy as np

    from cerebrascan.imaging.array_pool import pooled_zeros
    from cerebrascan.imaging.postprocess import to_float16

    assert list(map_channels(lambda value: value * 2, range(5))) == [0, 2, 4, 6, 8]
    assert not pooled_zeros((40 << 20,), np.uint8).any()
    values = np.linspace(0, 1, 1 << 17, dtype=np.float32)
    assert np.array_equal(to_float16(values), values.astype(np.float16))


def test_a_forked_child_gets_working_threads_pool_and_cast() -> None:
    """A child forked after the parent used them must not wait on the parent's threads or
    locks (the executor would count threads the child does not have)."""
    import multiprocessing

    import numpy as np

    from cerebrascan.imaging.array_pool import default_pool
    from cerebrascan.imaging.postprocess import to_float16

    list(map_channels(abs, range(4)))  # the parent's threads are running
    to_float16(np.ones(1 << 17, dtype=np.float32))  # and its cast session is built
    before = default_pool().max_bytes
    default_pool().configure(64 << 20)
    try:
        child = multiprocessing.get_context("fork").Process(target=_work_in_a_forked_child)
        child.start()
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
            child.join()
            pytest.fail("the forked child hung")
        assert child.exitcode == 0
    finally:
        default_pool().configure(before)
