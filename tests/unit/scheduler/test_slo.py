"""The latency controller (scheduler/slo.py): it learns what a batch costs, sets the queue delay
and the batch cap from the budget and the arrival rate, backs off when the observed p99 crosses
the budget, and refuses at arrival what would miss it. Driven by a simulated engine whose run
time grows with the rows, on simulated time; then through the real batcher."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from ferry.common.errors import Overloaded
from ferry.engines.base import UNBOUNDED, ExecutionResult, Feed
from ferry.engines.fake import FakeEngine, FakeInstance
from ferry.scheduler import BatchingConfig, ModelScheduler
from ferry.scheduler.clock import FakeClock
from ferry.scheduler.loop_lag import LoopLag
from ferry.scheduler.slo import (
    CAP_SHARE,
    DEEPEST_CUT,
    DELAY_SHARE,
    FIRST_SKIPPED,
    LEARNED_AFTER,
    PROBE_S,
    SAFETY_MAX,
    SAFETY_MIN,
    RunTimeModel,
    SloConfig,
    SloController,
)
from tests.unit.scheduler.conftest import MS, ask, settle, started

BUDGET_S = 0.010
LEARN = FIRST_SKIPPED + LEARNED_AFTER  # batches until the controller decides


def run_time(rows: int) -> float:
    """The simulated engine: 0.5 ms per batch plus 20 µs per row."""
    return 0.0005 + 0.00002 * rows


CAPACITY = 40_000
"""Rows/s the simulated engine serves with every batch within half the budget (2 runs of a
225-row batch fill 10 ms: 45,000 rows/s at the edge; a little under it)."""


@dataclass
class Outcome:
    latencies: list[float]
    refused: int
    offered: int

    @property
    def p99(self) -> float:
        return float(np.percentile(self.latencies, 99))


def simulate(
    rate_rows_s: float,
    seconds: float,
    controller: SloController,
    rows: int = 16,
    seed: int = 0,
    engine: Callable[[int], float] = run_time,
    start: float = 0.0,
) -> Outcome:
    """Poisson arrivals of `rows`-row requests onto one instance whose batches take
    `engine(rows)` seconds, from `start` for `seconds`, batches formed as the batcher forms them
    (leave when the cap is reached or the oldest has waited the delay)."""
    rng = np.random.default_rng(seed)
    now = start
    arrivals = deque[float]()
    t = start
    while t < start + seconds:
        t += rng.exponential(rows / rate_rows_s)
        arrivals.append(t)
    queue: deque[tuple[float, float]] = deque()  # (arrival time, plan), `rows` rows each
    free_at = start
    latencies: list[float] = []
    refused = 0
    offered = len(arrivals)
    while arrivals or queue:
        # next thing: an arrival, or the instance deciding
        next_arrival = arrivals[0] if arrivals else float("inf")
        if queue and free_at <= next_arrival:
            now = max(now, free_at)
            cap = controller.cap_rows(1024)
            delay = controller.delay_ns(0) / 1e9
            leave_at = queue[0][0] + delay
            if len(queue) * rows >= cap or now >= leave_at or not arrivals:
                take = max(1, min(len(queue), cap // rows))
                batch = [queue.popleft() for _ in range(take)]
                took = engine(take * rows)
                free_at = now + took
                controller.batch_ran(take * rows, took, int(free_at * 1e9))
                for arrived, plan in batch:
                    latencies.append(free_at - arrived)
                    controller.answered(free_at - arrived, plan, int(free_at * 1e9))
                continue
            if leave_at < next_arrival:
                now = leave_at
                free_at = leave_at
                continue
        now = arrivals.popleft()
        controller.running = 1 if free_at > now else 0  # as the runner counts batches running
        controller.arrived(rows, int(now * 1e9))
        try:
            plan = controller.admit(len(queue) * rows, rows, int(now * 1e9), None)
        except Overloaded:
            refused += 1
            continue
        queue.append((now, plan))
    return Outcome(latencies, refused, offered)


def refusal(
    slo: SloController, queued_rows: int, rows: int, now_ns: int, deadline_ns: int | None = None
) -> Overloaded | None:
    """What admitting a request now does: the refusal, or None when it is admitted."""
    try:
        slo.admit(queued_rows, rows, now_ns, deadline_ns)
    except Overloaded as exc:
        return exc
    return None


def controller(**kw: object) -> SloController:
    return SloController(SloConfig(BUDGET_S, **kw), instances=1, max_rows=1024, now_ns=0)  # type: ignore[arg-type]


def test_the_cost_model_learns_a_line_and_follows_drift() -> None:
    model = RunTimeModel()
    for rows in (16, 64, 256, 32, 128) * 10:
        model.observe(rows, run_time(rows))
    assert model.predict(512) == pytest.approx(run_time(512), rel=1e-6)
    for rows in (16, 64, 256, 32, 128) * 40:  # the machine got twice as slow
        model.observe(rows, 2 * run_time(rows))
    assert model.predict(512) == pytest.approx(2 * run_time(512), rel=0.02)


def test_what_rows_cost_is_learned_from_the_engines_own_time() -> None:
    """The waits around a batch (hand-offs to and from the event loop) do not grow with its rows,
    even when, by chance, the big batches met the long waits: fitted to whole batch times, that
    would read as a cost per row four times the engine's."""
    model = RunTimeModel()
    for rows in (64, 512) * 20:
        engine = 0.0002 + 0.000001 * rows
        waits = 0.001 if rows == 64 else 0.003
        model.observe(rows, engine + waits, engine_s=engine)
    per_row = (model.predict(1024) - model.predict(64)) / (1024 - 64)
    assert per_row == pytest.approx(0.000001, rel=1e-6)
    waits = model.predict(64) - (0.0002 + 0.000064)
    assert waits == pytest.approx(0.002, rel=0.05)  # the mean waits (recent batches weigh more)


def test_until_it_has_learned_the_configured_settings_apply() -> None:
    slo = controller()
    for _ in range(LEARN - 1):
        slo.batch_ran(64, run_time(64), 0)
    assert slo.delay_ns(200_000) == 200_000 and slo.cap_rows(1024) == 1024
    assert refusal(slo, 10**6, 16, 0) is None  # no refusal on a guess
    slo.batch_ran(64, run_time(64), 0)
    assert slo.cap_rows(1024) < 1024


@pytest.mark.parametrize("load", [0.3, 0.6, 0.9])
def test_steady_load_converges_within_the_budget(load: float) -> None:
    slo = controller()
    outcome = simulate(load * CAPACITY, 4.0, slo)
    steady = outcome.latencies[len(outcome.latencies) // 4 :]
    assert float(np.percentile(steady, 99)) <= BUDGET_S
    within = sum(1 for latency in outcome.latencies if latency <= BUDGET_S)
    assert within >= 0.95 * outcome.offered  # goodput: answered within the budget
    decision = slo.decision
    assert run_time(decision.cap_rows) <= CAP_SHARE * BUDGET_S + 1e-9
    assert decision.delay_s <= DELAY_SHARE * BUDGET_S


def test_light_load_waits_for_nothing_and_heavy_load_batches() -> None:
    light, heavy = controller(), controller()
    simulate(0.05 * CAPACITY, 2.0, light)
    simulate(0.9 * CAPACITY, 2.0, heavy)
    assert light.decision.delay_s == 0.0
    assert heavy.decision.delay_s > 0.0


def test_overload_is_refused_at_arrival_and_what_is_admitted_holds_the_budget() -> None:
    slo = controller()
    outcome = simulate(1.3 * CAPACITY, 3.0, slo)
    assert outcome.refused > 0.1 * outcome.offered
    assert outcome.p99 <= BUDGET_S
    assert slo.refused["budget"] == outcome.refused


def mostly_fixed(rows: int) -> float:
    """A simulated GPU: 3 ms a batch whatever its size (launches, copies, hand-offs), 0.5 µs a
    row."""
    return 0.003 + 0.0000005 * rows


def test_a_batch_cost_that_is_mostly_fixed_does_not_shrink_the_cap() -> None:
    """Even when the largest batch takes more than its share of the budget: a smaller one would
    hardly be faster, and would serve fewer rows."""
    slo = controller()
    for i in range(LEARN):
        rows = (64, 512)[i % 2]
        slo.batch_ran(rows, 0.005 + 0.000001 * rows, 0)  # 5 ms: over CAP_SHARE of 10 ms alone
    assert slo.cost.knows_slope
    assert slo.decision.cap_rows == 1024


def test_the_cap_never_falls_below_two_requests() -> None:
    """Where even one request's batch takes more than the budget's share (a slow or noisy
    machine), a cap of one request would make every batch a lone request and every queued
    request refusable."""
    slo = controller()
    slo.arrived(64, 0)
    for i in range(LEARN):
        rows = (64, 128)[i % 2]
        slo.batch_ran(rows, 0.0001 * rows, 0)  # 6.4 ms for one request: over 40% of 10 ms
    assert slo.cost.knows_slope
    assert 2 * 64 <= slo.decision.cap_rows < 4 * 64  # shrunk, to two requests at the least


def test_what_light_load_taught_does_not_cap_the_batches_heavy_load_needs() -> None:
    """At light load every batch is one 64-row request; proportional to rows, 3 ms for 64 rows
    would cap batches at one request, too few for heavier load, and the controller would never
    see a bigger batch to learn otherwise. The cap stays at least twice what it has seen until
    it has seen sizes enough to know."""
    slo = controller()
    light = simulate(5_000, 3.0, slo, rows=64, engine=mostly_fixed)
    assert light.refused == 0
    heavy = simulate(40_000, 3.0, slo, rows=64, engine=mostly_fixed, start=3.0, seed=1)
    assert heavy.refused <= 0.01 * heavy.offered
    assert heavy.p99 <= BUDGET_S
    assert slo.cost.knows_slope and slo.decision.cap_rows > 2 * 64


def test_without_early_refusal_overload_queues_as_before() -> None:
    slo = controller(refuse_early=False)
    outcome = simulate(1.3 * CAPACITY, 1.0, slo)
    assert outcome.refused == 0 and outcome.p99 > BUDGET_S


def test_it_backs_off_when_the_observed_p99_crosses_the_budget_and_creeps_back() -> None:
    slo = controller()
    for _ in range(LEARN):
        slo.batch_ran(64, run_time(64), 0)
    before = slo.decision.safety
    for i in range(100):  # a second of answers far over the budget (the engine stalled)
        slo.answered(3 * BUDGET_S, 0.0, i * 10 * MS)
    slo.batch_ran(64, run_time(64), 1000 * MS)
    assert slo.decision.safety == pytest.approx(before * DEEPEST_CUT)
    assert slo.decision.observed_p99_s == pytest.approx(3 * BUDGET_S)
    now = 1000 * MS
    for _ in range(20):  # calm seconds: the share grows back, never past its ceiling
        now += 1000 * MS
        for i in range(50):
            slo.answered(0.2 * BUDGET_S, 0.0, now - i * MS)
        slo.batch_ran(64, run_time(64), now)
    assert before * DEEPEST_CUT < slo.decision.safety <= SAFETY_MAX


def test_a_p99_just_under_the_budget_already_backs_off_and_one_well_under_does_not() -> None:
    """The target sits below the budget: waiting for the budget itself to be crossed leaves
    nothing for the tail of the next second."""
    for p99, backs_off in ((0.95 * BUDGET_S, True), (0.75 * BUDGET_S, False)):
        slo = controller()
        for _ in range(LEARN):
            slo.batch_ran(64, run_time(64), 0)
        before = slo.decision.safety
        for i in range(100):
            slo.answered(p99, 0.0, i * 10 * MS)
        slo.batch_ran(64, run_time(64), 1000 * MS)
        assert (slo.decision.safety < before) is backs_off


def test_one_slow_second_cuts_the_share_once_not_at_every_review_that_still_sees_it() -> None:
    slo = controller()
    for _ in range(LEARN):
        slo.batch_ran(64, run_time(64), 0)
    before = slo.decision.safety
    for i in range(100):
        slo.answered(3 * BUDGET_S, 0.0, i * 10 * MS)
    for review in range(4):  # the same slow answers, reviewed four times within their second
        slo.batch_ran(64, run_time(64), (1000 + 260 * review) * MS)
    assert slo.decision.safety == pytest.approx(before * DEEPEST_CUT)
    for i in range(100):  # another slow second, once the first has left the window
        slo.answered(3 * BUDGET_S, 0.0, 2100 * MS + i * 10 * MS)
    slo.batch_ran(64, run_time(64), 3100 * MS)
    assert slo.decision.safety == pytest.approx(before * DEEPEST_CUT**2)


def test_a_request_that_joins_the_next_batch_is_never_refused_for_the_budget() -> None:
    """On a machine whose latency is over the budget whatever the queue (noise, a budget under
    a lone batch's time), the admission share falls to its floor; refusing requests that would
    run in the next batch would then throw answers away and make no one faster."""
    slo = controller()
    for _ in range(LEARN):
        slo.batch_ran(64, run_time(64), 0)
    now = 0
    for second in range(1, 6):  # slow seconds: the share is cut to its floor
        for i in range(100):
            slo.answered(3 * BUDGET_S, 0.0, (second - 1) * 1000 * MS + i * 10 * MS)
        now = second * 1000 * MS
        slo.batch_ran(64, run_time(64), now)
    assert slo.decision.safety == pytest.approx(SAFETY_MIN)
    slo.running = 1  # and an instance busy with a full batch
    cap = slo.decision.cap_rows
    refusal(slo, 0, 16, now + 1)  # the probe of this half second: admitted whatever it predicts
    assert slo.predicted_latency_s(cap - 16, 16) > SAFETY_MIN * BUDGET_S  # over the share
    assert refusal(slo, cap - 16, 16, now + 2) is None  # ...but it joins the next batch
    refused = refusal(slo, cap, 16, now + 3)  # queued behind a whole batch
    assert refused is not None and refused.reason == "budget"


def lagging(lag_s: float) -> tuple[SloController, LoopLag]:
    """A learned controller on a loop whose probe last read `lag_s` of lateness."""
    loop_lag = LoopLag(FakeClock())
    loop_lag.record(int(lag_s * 1e9), 0)
    slo = SloController(SloConfig(BUDGET_S), 1, 1024, 0, loop_lag)
    for _ in range(LEARN):
        slo.batch_ran(64, run_time(64), 0)
    return slo, loop_lag


def test_the_loops_lag_counts_in_a_requests_predicted_latency() -> None:
    """A request meets the loop's lag before it reaches the queue and again after its batch; no
    batch cost shows it, so a prediction without it promises what callers never see."""
    quiet, _ = lagging(0.0)
    busy, _ = lagging(0.004)
    cap = quiet.decision.cap_rows
    assert busy.predicted_latency_s(cap, 16) == pytest.approx(
        quiet.predicted_latency_s(cap, 16) + 0.004
    )
    assert busy.decision.loop_lag_s == pytest.approx(0.004)
    assert quiet.predicted_latency_s(cap, 16) < SAFETY_MAX * BUDGET_S - 0.004
    refusal(quiet, 0, 16, 1)  # the half second's probes: admitted whatever they predict
    refusal(busy, 0, 16, 1)
    assert refusal(quiet, cap, 16, 2) is None  # behind a whole batch, and it fits
    refused = refusal(busy, cap, 16, 2)  # the same queue with the lag: it does not
    assert refused is not None and refused.reason == "budget"


def test_a_p99_under_its_target_backs_off_when_the_loops_lag_takes_it_over() -> None:
    for lag_s, backs_off in ((0.0, False), (0.003, True)):
        slo, _ = lagging(lag_s)
        before = slo.decision.safety
        for i in range(100):
            slo.answered(0.65 * BUDGET_S, 0.0, i * 10 * MS)
        slo.batch_ran(64, run_time(64), 1000 * MS)
        assert (slo.decision.safety < before) is backs_off


def test_a_deadline_that_cannot_be_met_is_refused_at_arrival() -> None:
    slo = controller()
    for _ in range(LEARN):
        slo.batch_ran(256, run_time(256), 0)
    refused = refusal(slo, 0, 16, 0, deadline_ns=100_000)  # 0.1 ms left
    assert refused is not None and refused.reason == "deadline"
    assert "after its deadline (0.1 ms left)" in str(refused)
    assert slo.refused == {"deadline": 1}
    assert refusal(slo, 0, 16, 0, deadline_ns=50 * MS) is None


@pytest.mark.asyncio
async def test_the_batcher_refuses_with_unavailable_and_caps_batches(clock: FakeClock) -> None:
    config = BatchingConfig(
        max_batch_size=64, dynamic=True, max_queue_delay_s=0.001, slo=SloConfig(BUDGET_S)
    )
    scheduler, engine = await started(config, clock=clock)
    runner = next(iter(scheduler._runners.values()))
    slo = runner.batcher.slo
    assert slo is not None
    for i in range(LEARN):  # taught that a row costs 1 ms: a batch of 4 fits 40% of 10 ms
        rows = (2, 8)[i % 2]
        slo.batch_ran(rows, rows * 0.001, clock.now())
    cap = slo.decision.cap_rows
    assert cap < 8
    engine.gate = asyncio.Event()
    first = [ask(scheduler, float(i), 1) for i in range(3)]
    await settle()
    late = ask(scheduler, 99.0, 8)
    await settle()
    with pytest.raises(Overloaded, match="over the model's p99 budget of 10 ms"):
        await late
    engine.gate.set()
    clock.advance(10 * MS)
    await settle()
    for task in first:
        await task
    assert max(engine.batch_log) <= cap
    await scheduler.stop()


class SteppedInstance(FakeInstance):
    """Holds two batches at once (as a GPU instance with two staging slots does); each batch
    finishes when the test sets the next of `releases`."""

    in_flight = 2

    def __init__(self, engine: FakeEngine) -> None:
        super().__init__("stepped", engine, UNBOUNDED)
        self.releases: deque[asyncio.Event] = deque()

    async def run(self, feed: Feed) -> ExecutionResult:
        release = asyncio.Event()
        self.releases.append(release)
        await release.wait()
        return self._compute(feed)


@pytest.mark.asyncio
async def test_overlapping_batches_teach_what_each_added_to_the_instance(clock: FakeClock) -> None:
    """Batch A runs 0-4 ms and batch B, started at 1 ms in the instance's second slot, ends at
    6 ms: the instance was taken 6 ms, A's 4 and B's 2 after it, not 4 + 5."""
    config = BatchingConfig(max_batch_size=64, dynamic=True, slo=SloConfig(BUDGET_S))
    instance = SteppedInstance(FakeEngine())
    scheduler = ModelScheduler("stepped", [instance], config, clock=clock)
    await scheduler.start()
    slo = next(iter(scheduler._runners.values())).batcher.slo
    assert slo is not None
    taught: list[float] = []
    slo.batch_ran = lambda rows, seconds, *_: taught.append(seconds)  # type: ignore[method-assign]
    first = ask(scheduler, 1.0)
    await settle()
    clock.advance(1 * MS)
    second = ask(scheduler, 2.0)
    await settle()
    assert len(instance.releases) == 2  # both batches on the instance at once
    clock.advance(3 * MS)
    instance.releases[0].set()
    await first
    clock.advance(2 * MS)
    instance.releases[1].set()
    await second
    assert taught == pytest.approx([0.004, 0.002])
    await scheduler.stop()


@pytest.mark.asyncio
async def test_a_controller_that_fails_to_learn_does_not_keep_answers_from_callers(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    config = BatchingConfig(max_batch_size=64, dynamic=True, slo=SloConfig(BUDGET_S))
    scheduler, _ = await started(config, clock=clock)
    slo = next(iter(scheduler._runners.values())).batcher.slo
    assert slo is not None

    def broken(*_: object) -> None:
        raise ZeroDivisionError("a bug in the controller")

    slo.batch_ran = broken  # type: ignore[method-assign]
    answer = await asyncio.wait_for(ask(scheduler, 3.0, 2), timeout=5)
    assert answer.outputs["y"].tolist() == [[6.0, 6.0], [6.0, 6.0]]
    assert "latency controller failed to learn" in caplog.text
    await scheduler.stop()


def test_cold_first_batches_and_a_lone_pause_do_not_teach_it_that_batches_are_dear() -> None:
    model = RunTimeModel()
    model.observe(1, 0.050)  # the first run: allocations, cold caches
    model.observe(2, 0.030)
    for rows in (16, 64, 256, 32, 128) * 4:
        model.observe(rows, run_time(rows))
    assert model.predict(64) == pytest.approx(run_time(64), rel=1e-6)
    model.observe(64, 0.100)  # one pause
    assert model.predict(64) == pytest.approx(run_time(64), rel=1e-6)
    for _ in range(3):  # but a lasting change is learned
        model.observe(64, 0.100)
    assert model.predict(64) > 2 * run_time(64)


def test_a_request_is_let_through_now_and_then_however_dear_it_looks() -> None:
    slo = controller()
    for _ in range(LEARN):
        slo.batch_ran(8, 0.008, 0)  # 1 ms a row: any big request is predicted to miss
    assert refusal(slo, 0, 64, 1 * MS) is not None
    probe_at = int(PROBE_S * 1e9) + 1 * MS
    assert refusal(slo, 0, 64, probe_at) is None  # a probe: the estimate meets a measurement
    assert refusal(slo, 0, 64, probe_at + 1 * MS) is not None


def test_predictions_follow_what_answered_requests_really_took() -> None:
    """The cost model sees batches, not the cores the front end shares or how batches really
    form: predictions are scaled by what requests took against what was planned for them."""
    slo = controller()
    for _ in range(LEARN):
        slo.batch_ran(64, run_time(64), 0)
    plan = slo.admit(0, 16, 0, None)
    assert plan == pytest.approx(slo.predicted_latency_s(0, 16))  # nothing learned yet
    deep = 300  # rows queued: planned over the admission share of the budget, under 3x it
    assert refusal(slo, deep, 16, 1 * MS) is not None
    for i in range(400):  # requests take a third of their plan
        slo.answered(plan / 3, plan, 2 * MS + i * MS)
    assert slo.predicted_latency_s(0, 16) == pytest.approx(plan / 3, rel=0.01)
    assert refusal(slo, deep, 16, 3 * MS) is None  # now it fits
    slo.answered(1000 * plan, plan, 402 * MS)  # one stalled request moves it a bounded step
    assert slo.predicted_latency_s(0, 16) < plan / 3 * 1.06  # unbounded, it would be 1.17x


def test_after_an_idle_spell_one_slow_answer_does_not_set_the_calibration_alone() -> None:
    """A burst on a model idle for a minute: its first answers are slow (cold caches, the whole
    burst in one batch). Sparse because no one asked, they weigh as any answer; a controller
    that let the first set its predictions would refuse the rest of the burst."""
    slo = controller()
    for _ in range(LEARN):
        slo.batch_ran(64, run_time(64), 0)
    plan = slo.admit(0, 16, 0, None)
    before = slo.predicted_latency_s(0, 16)
    slo.answered(4 * plan, plan, 60_000 * MS)
    assert slo.predicted_latency_s(0, 16) < 1.05 * before


def test_while_it_refuses_its_probes_correct_the_calibration_quickly() -> None:
    slo = controller()
    for _ in range(LEARN):
        slo.batch_ran(64, run_time(64), 0)
    plan = slo.admit(0, 16, 0, None)
    for i in range(400):  # a slow spell: answers took four times their plans
        slo.answered(4 * plan, plan, i * MS)
    inflated = slo.predicted_latency_s(0, 16)
    now = 400 * MS
    for _ in range(3):  # refusals, then a probe answered as planned, every half second
        now += int(PROBE_S * 1e9)
        refusal(slo, 300, 16, now - 2)  # admitted: the probe
        assert refusal(slo, 300, 16, now - 1) is not None
        slo.answered(plan, plan, now)
    assert slo.predicted_latency_s(0, 16) < 0.5 * inflated


def test_a_controller_that_refuses_nearly_everything_reopens() -> None:
    """After a bad second (a cold start under overload) it admits little, so little is answered:
    the few answers (probes) that come back well within the budget must be enough to reopen."""
    slo = controller()
    for _ in range(LEARN):
        slo.batch_ran(64, run_time(64), 0)
    for i in range(100):
        slo.answered(3 * BUDGET_S, 0.0, i * 10 * MS)
    slo.batch_ran(64, run_time(64), 1000 * MS)
    shut = slo.decision.safety
    now = 1000 * MS
    for _ in range(20):  # one probe answered every half second, well within the budget
        now += int(PROBE_S * 1e9)
        slo.answered(0.2 * BUDGET_S, 0.0, now)
        slo.batch_ran(64, run_time(64), now)
    assert shut < 0.8 and slo.decision.safety == pytest.approx(SAFETY_MAX)
    slo.answered(3 * BUDGET_S, 0.0, now + 1 * MS)  # one slow answer is not a p99 to judge by
    slo.batch_ran(64, run_time(64), now + 300 * MS)
    assert slo.decision.safety == pytest.approx(SAFETY_MAX)


def test_a_request_waits_for_a_running_batch_only_while_every_instance_is_busy() -> None:
    slo = SloController(SloConfig(BUDGET_S), instances=2, max_rows=1024, now_ns=0)
    for _ in range(LEARN):
        slo.batch_ran(64, run_time(64), 0)
    cost, cap = slo.cost.predict, slo.decision.cap_rows
    assert slo.predicted_latency_s(0, 16) == pytest.approx(cost(16))  # an idle instance takes it
    slo.running = 1
    assert slo.predicted_latency_s(0, 16) == pytest.approx(cost(16))  # one of two is idle
    slo.running = 2
    assert slo.predicted_latency_s(0, 16) == pytest.approx(cost(16) + 0.5 * cost(cap))
