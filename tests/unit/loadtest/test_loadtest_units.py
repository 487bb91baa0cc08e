"""The load generator's arithmetic: percentiles, workload choices, Poisson arrivals, the open
loop's clock discipline (with a fake clock), and the SLO search."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from ferry.loadtest.client import arrival_times, open_loop
from ferry.loadtest.search import Slo, search
from ferry.loadtest.stats import LoadResult, Tally, percentiles
from ferry.loadtest.workload import Choice, Prepared, WorkloadError, with_id
from ferry.proto import grpc_service_pb2 as pb


def test_percentiles_match_numpy_on_known_samples() -> None:
    rng = np.random.default_rng(4)
    samples = rng.exponential(0.003, 10_001)
    got = percentiles(samples)
    expected = np.percentile(samples * 1e3, [50, 90, 99, 99.9])
    assert [got["p50"], got["p90"], got["p99"], got["p99.9"]] == pytest.approx(expected)
    assert got["max"] == pytest.approx(samples.max() * 1e3)
    assert percentiles([0.001, 0.002, 0.003, 0.004])["p50"] == pytest.approx(2.5)
    assert percentiles([]) == {}


def test_choices_parse_every_form(tmp_path: Path) -> None:
    assert Choice.parse("64", "rows").values == (64,)
    assert Choice.parse("2:5", "rows").values == (2, 3, 4, 5)
    mix = Choice.parse("1=0.25,2=0.75", "priority")
    assert mix.values == (1, 2) and mix.mean == pytest.approx(1.75)
    table = tmp_path / "rows.txt"
    table.write_text("# rows weight\n16 3\n256 1\n")
    assert Choice.parse(f"@{table}", "rows").mean == pytest.approx((16 * 3 + 256) / 4)
    drawn = Choice.parse("1=0.9,100=0.1", "rows").draw(np.random.default_rng(0), 10_000)
    assert 0.87 < np.mean(drawn == 1) < 0.93
    for bad in ("0:3", "x", "5:2", "1=-1", "@/no/such/file"):
        with pytest.raises(WorkloadError):
            Choice.parse(bad, "rows")


def test_with_id_sets_the_id_without_reserializing() -> None:
    request = pb.ModelInferRequest(model_name="m", id="old")
    merged = pb.ModelInferRequest.FromString(with_id(request.SerializeToString(), "42"))
    assert merged.id == "42" and merged.model_name == "m"


def test_poisson_arrivals_keep_the_rate() -> None:
    times = arrival_times(2000.0, 10.0, 20.0, np.random.default_rng(1))
    assert times[0] >= 10.0 and times[-1] < 20.0 and np.all(np.diff(times) > 0)
    assert len(times) == pytest.approx(20_000, rel=0.03)
    gaps = np.diff(times)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, rel=0.05)  # exponential gaps


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def test_open_loop_keeps_its_rate_and_counts_latency_from_the_intended_time() -> None:
    clock = FakeClock()
    service_s = 0.010
    sent_at: list[float] = []

    async def slow_server(request: Prepared) -> str | None:
        sent_at.append(clock.now)
        start = clock.now
        while clock.now < start + service_s:  # noqa: ASYNC110 (fake time: a poll is the model)
            await asyncio.sleep(0)
        return None

    async def drive() -> Tally:
        tally = Tally()
        running = True

        async def ticker() -> None:  # time also passes while code runs: 1 µs per loop turn
            while running:
                clock.now += 1e-6
                await asyncio.sleep(0)

        ticking = asyncio.create_task(ticker())
        await open_loop(
            [slow_server],
            [Prepared(b"", 2)],
            500.0,
            0.0,
            2.0,
            tally,
            now=clock,
            sleep=clock.sleep,
            seed=3,
        )
        running = False
        await ticking
        return tally

    tally = asyncio.run(drive())
    assert tally.sent == pytest.approx(1000, rel=0.1)  # the rate held although answers are slow
    assert len(tally.latencies_s) == tally.sent and tally.rows == 2 * tally.sent
    assert min(tally.latencies_s) >= service_s - 1e-9
    # Sends are never held back by outstanding answers: arrivals stay Poisson.
    gaps = np.diff(sent_at)
    assert np.mean(gaps) == pytest.approx(1 / 500, rel=0.1)


def test_open_loop_charges_a_late_send_to_its_latency() -> None:
    clock = FakeClock()

    async def instant(request: Prepared) -> str | None:
        return None

    async def stalled_sleep(seconds: float) -> None:
        clock.now += seconds + 0.050  # the client wakes 50 ms late every time
        await asyncio.sleep(0)

    async def drive() -> Tally:
        tally = Tally()
        await open_loop(
            [instant], [Prepared(b"", 1)], 100.0, 0.0, 1.0, tally, now=clock, sleep=stalled_sleep
        )
        return tally

    tally = asyncio.run(drive())
    assert tally.late_sends > 0
    assert max(tally.latencies_s) >= 0.050  # the lateness shows in the latency, not hidden


def synthetic(rate: float) -> LoadResult:
    """A server whose p99 grows sharply past 1,000 requests/s."""
    p99 = 2.0 if rate <= 1000 else 2.0 + (rate - 1000) / 10
    return LoadResult("m", "open", 1.0, int(rate), int(rate), {}, rate, rate, {"p99": p99})


def test_search_finds_the_highest_rate_under_the_slo() -> None:
    found = search(synthetic, Slo(5.0), start_rate=100, max_rate=100_000, bisect_steps=8)
    assert 1000 <= found.best_rate <= 1030  # 1,030/s is where p99 crosses 5 ms
    rates = [rate for rate, _, _ in found.steps]
    assert rates[:5] == [100, 200, 400, 800, 1600]


def test_search_counts_errors_against_the_budget() -> None:
    def failing(rate: float) -> LoadResult:
        result = synthetic(rate)
        result.errors = {"UNAVAILABLE": int(rate * 0.01)} if rate > 300 else {}
        return result

    found = search(failing, Slo(5.0, error_budget=0.001), start_rate=100, max_rate=10_000)
    assert 200 <= found.best_rate < 400
    assert search(synthetic, Slo(0.5), start_rate=100, max_rate=1000).best_rate == 0.0
