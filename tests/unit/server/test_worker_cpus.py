"""How `ferry serve --workers N` deals the CPUs out: each worker pinned to its own share, so N
workers size their compute threads from their share instead of each from the whole machine."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ferry.server.workers import AUTO_MAX_WORKERS, auto_workers, cpu_shares


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
    assert auto_workers() == 2
    monkeypatch.setattr(workers, "usable_cpus", lambda: 64)
    assert auto_workers() == AUTO_MAX_WORKERS
