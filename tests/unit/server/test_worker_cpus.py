"""How `ferry serve --workers N` deals the CPUs out: each worker pinned to its own share, so N
workers size their compute threads from their share instead of each from the whole machine; and
how many `--workers auto` starts for the CPUs, the memory and the models."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ferry.server.workers import (
    AUTO_MAX_WORKERS,
    AUTO_MEMORY_SHARE,
    MODEL_MEMORY_FACTOR,
    WORKER_BASE_BYTES,
    auto_workers,
    cpu_shares,
)

GIB = 1 << 30


@given(
    cpus=st.lists(st.integers(0, 255), min_size=1, max_size=64, unique=True).map(sorted),
    workers=st.integers(1, 80),
)
def test_every_cpu_goes_to_some_worker_and_shares_are_even(cpus: list[int], workers: int) -> None:
    shares = cpu_shares(cpus, workers)
    assert len(shares) == workers
    assert set().union(*shares) == set(cpus)
    sizes = [len(share) for share in shares]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    if workers <= len(cpus):  # fewer workers than CPUs: no CPU is shared
        assert sum(sizes) == len(cpus)


def test_shares_are_contiguous_runs_of_the_cpus_allowed() -> None:
    assert cpu_shares([2, 3, 5, 7], 2) == [frozenset({2, 3}), frozenset({5, 7})]
    assert cpu_shares([0, 1], 3) == [frozenset({0}), frozenset({1}), frozenset({0})]


def test_auto_is_one_worker_per_usable_cpu_within_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    import ferry.server.workers as workers

    monkeypatch.setattr(workers, "usable_cpus", lambda: 2)
    assert auto_workers(memory_bytes=0) == 2
    monkeypatch.setattr(workers, "usable_cpus", lambda: 64)
    assert auto_workers(memory_bytes=0) == AUTO_MAX_WORKERS
    monkeypatch.setattr(workers, "usable_memory_bytes", lambda: 64 * GIB)
    assert auto_workers() == AUTO_MAX_WORKERS  # the memory found, enough for small models


def test_auto_starts_no_more_workers_than_half_the_memory_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ferry.server.workers as workers

    monkeypatch.setattr(workers, "usable_cpus", lambda: 16)
    # 1 GiB of model files: each worker about 2.1 GiB, 4 GiB of 8 for workers: one.
    assert auto_workers(1 * GIB, memory_bytes=8 * GIB) == 1
    assert auto_workers(1 * GIB, memory_bytes=32 * GIB) == 7
    assert auto_workers(0, memory_bytes=32 * GIB) == AUTO_MAX_WORKERS
    monkeypatch.setattr(workers, "usable_memory_bytes", lambda: 8 * GIB)
    assert auto_workers(1 * GIB) == 1  # the memory the process may use, found by itself
    # A container too small for even one worker still gets one: serving, not refusing to start.
    assert auto_workers(4 * GIB, memory_bytes=1 * GIB) == 1


@given(
    cpus=st.integers(1, 128),
    model_bytes=st.integers(0, 64 * GIB),
    memory=st.integers(0, 1024 * GIB),
    more=st.integers(0, 64 * GIB),
)
def test_auto_fits_the_memory_and_never_grows_with_the_models(
    cpus: int, model_bytes: int, memory: int, more: int
) -> None:
    import ferry.server.workers as workers

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(workers, "usable_cpus", lambda: cpus)
        count = auto_workers(model_bytes, memory_bytes=memory)
        assert 1 <= count <= min(cpus, AUTO_MAX_WORKERS)
        if memory and count > 1:  # more than one only where they all fit the share
            each = WORKER_BASE_BYTES + MODEL_MEMORY_FACTOR * model_bytes
            assert count * each <= memory * AUTO_MEMORY_SHARE
        assert auto_workers(model_bytes + more, memory_bytes=memory) <= count
        if memory:
            assert auto_workers(model_bytes, memory_bytes=memory + more) >= count
