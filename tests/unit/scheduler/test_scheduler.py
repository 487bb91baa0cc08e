"""ModelScheduler with the in-memory FakeEngine: batching, routing of rows, and every way a
request can end (result, engine error, bad output, cancellation, deadline, shutdown)."""

from __future__ import annotations

import asyncio
import gc
import weakref

import numpy as np
import pytest

from ferry.common.errors import DeadlineExceeded, EngineError, InvalidInput, QueueFull, ShuttingDown
from ferry.engines.fake import FakeEngine
from ferry.scheduler import BatchingConfig, ModelScheduler, QueuePolicy
from ferry.scheduler.clock import FakeClock
from ferry.scheduler.request import InferenceResult
from ferry.scheduler.runner import ISOLATION_MIN_NS
from tests.unit.scheduler.conftest import ask, rows, settle, started

pytestmark = pytest.mark.asyncio


async def make(
    config: BatchingConfig, instances: int = 1, clock: FakeClock | None = None
) -> tuple[ModelScheduler, FakeEngine]:
    return await started(config, instances=instances, clock=clock)


def submit(
    scheduler: ModelScheduler, n: int, value: float, **kw: object
) -> asyncio.Task[InferenceResult]:
    return ask(scheduler, value, n, **kw)


BATCHED = BatchingConfig(max_batch_size=8, dynamic=True)


async def test_requests_waiting_for_a_busy_instance_leave_together() -> None:
    scheduler, engine = await make(BATCHED)
    engine.gate = asyncio.Event()
    first = submit(scheduler, 1, 0.0)
    await settle()  # the first batch is running, held at the gate
    waiting = [submit(scheduler, 1, float(i)) for i in range(1, 6)]
    await settle()
    engine.gate.set()
    results = await asyncio.gather(first, *waiting)
    assert engine.batch_log == [1, 5]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result.outputs["y"], np.full((1, 2), 2.0 * i))
    assert scheduler.stats.execution_count == 2
    assert scheduler.stats.inference_count == 6
    assert sorted(scheduler.stats.batch_stats) == [1, 5]
    await scheduler.stop()


async def test_batches_never_exceed_max_batch_size() -> None:
    scheduler, engine = await make(BATCHED)
    engine.gate = asyncio.Event()
    tasks = [submit(scheduler, 3, float(i)) for i in range(7)]
    await settle()
    engine.gate.set()
    await asyncio.gather(*tasks)
    assert sum(engine.batch_log) == 21
    assert max(engine.batch_log) <= 8
    await scheduler.stop()


async def test_only_equal_shapes_share_a_batch() -> None:
    scheduler, engine = await make(BATCHED)
    engine.gate = asyncio.Event()
    narrow = [asyncio.create_task(scheduler.infer(rows(1, 1.0, 2), 1)) for _ in range(3)]
    wide = [asyncio.create_task(scheduler.infer(rows(1, 1.0, 5), 1)) for _ in range(3)]
    await settle()
    engine.gate.set()
    results = await asyncio.gather(*narrow, *wide)
    assert [r.outputs["y"].shape for r in results] == [(1, 2)] * 3 + [(1, 5)] * 3
    assert all(r.batch_rows <= 3 for r in results)
    await scheduler.stop()


async def test_without_dynamic_batching_each_request_runs_alone() -> None:
    scheduler, engine = await make(BatchingConfig(max_batch_size=8, dynamic=False))
    engine.gate = asyncio.Event()
    tasks = [submit(scheduler, 2, float(i)) for i in range(4)]
    await settle()
    engine.gate.set()
    await asyncio.gather(*tasks)
    assert engine.batch_log == [2, 2, 2, 2]
    await scheduler.stop()


async def test_preferred_batch_size_leaves_before_the_delay() -> None:
    config = BatchingConfig(
        max_batch_size=16, dynamic=True, preferred_batch_sizes=(4,), max_queue_delay_s=3600
    )
    scheduler, engine = await make(config)
    tasks = [submit(scheduler, 1, float(i)) for i in range(4)]
    results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
    assert engine.batch_log == [4]
    assert all(r.batch_rows == 4 for r in results)
    await scheduler.stop()


async def test_delay_window_starts_at_the_oldest_arrival(clock: FakeClock) -> None:
    config = BatchingConfig(max_batch_size=16, dynamic=True, max_queue_delay_s=0.001)
    scheduler, engine = await make(config, clock=clock)
    first = submit(scheduler, 1, 1.0)
    await settle()
    clock.advance_to(600_000)  # 0.6 ms: not yet
    second = submit(scheduler, 1, 2.0)
    await settle()
    clock.advance_to(999_999)
    await settle()
    assert engine.batch_log == []
    clock.advance_to(1_000_000)  # 1 ms after the first arrival: leave with both
    await asyncio.wait_for(asyncio.gather(first, second), timeout=5)
    assert engine.batch_log == [2]
    assert clock.pending == 0  # the window's timer went with its batch
    await scheduler.stop()


async def batch_behind_a_blocker(
    scheduler: ModelScheduler, engine: FakeEngine, values: list[float]
) -> list[InferenceResult | BaseException]:
    """One-row requests of `values` queued behind a running one, so that they form one batch;
    their outcomes (answers or errors)."""
    engine.gate = asyncio.Event()
    blocker = submit(scheduler, 1, 0.0)
    await settle()
    waiting = [submit(scheduler, 1, v) for v in values]
    await settle()
    engine.gate.set()
    engine.gate = None
    await blocker
    return await asyncio.gather(*waiting, return_exceptions=True)


async def test_a_failed_batch_fails_only_the_requests_that_fail_on_their_own() -> None:
    scheduler, engine = await make(BATCHED)
    engine.fail = lambda x: bool((x == 7.0).any())
    values = [1.0, 7.0, 2.0, 3.0, 7.0, 4.0]
    outcomes = await batch_behind_a_blocker(scheduler, engine, values)
    for value, outcome in zip(values, outcomes, strict=True):
        if value == 7.0:
            assert isinstance(outcome, EngineError)
        else:
            assert not isinstance(outcome, BaseException)
            assert outcome.outputs["y"][0, 0] == 2 * value
    assert engine.batch_log[:2] == [1, 6] or engine.batch_log[1] == 6  # one failed batch of six
    assert scheduler.stats.isolated_batches == 1 and scheduler.stats.culprits == 2
    await scheduler.stop()


async def test_a_search_past_its_time_allowed_fails_the_rest_with_an_error_naming_no_one() -> None:
    """Re-runs that take longer than the search may (a flood of failing requests, an engine
    that fails slowly) end it: the requests not yet told apart share an error that names no
    request's data, instead of holding the instance for good."""
    clock = FakeClock()
    scheduler, engine = await make(BATCHED, clock=clock)
    runs = 0

    def fails_slowly(x: np.ndarray) -> bool:
        nonlocal runs
        runs += 1
        if runs > 2:  # the re-runs (after the blocker and the failed batch) each outlast it
            clock.advance(2 * ISOLATION_MIN_NS)
        return bool((x == 7.0).any())

    engine.fail = fails_slowly
    values = [1.0, 7.0, 2.0, 3.0, 7.0, 4.0]  # a culprit in each half
    for outcome in await batch_behind_a_blocker(scheduler, engine, values):
        assert isinstance(outcome, EngineError)
        assert "could not be told apart" in str(outcome) and "7" not in str(outcome)
    assert runs == 4  # the blocker, the failed batch, one re-run of each half: then it stopped
    await scheduler.stop()


async def test_a_culprit_gets_only_its_own_error_and_mates_never_see_its_data() -> None:
    """The backend's message names the culprit's data: only the culprit may see it."""
    scheduler, engine = await make(BATCHED)
    engine.gate = asyncio.Event()

    def fail(x: np.ndarray) -> bool:
        if (x == 666.0).any():
            raise EngineError(f"index {x.max():.0f} out of bounds")
        return False

    engine.fail = fail
    blocker = submit(scheduler, 1, 0.0)
    await settle()
    mates = [submit(scheduler, 1, v) for v in (1.0, 666.0, 2.0)]
    await settle()
    engine.gate.set()
    engine.gate = None
    await blocker
    outcomes = await asyncio.gather(*mates, return_exceptions=True)
    assert isinstance(outcomes[1], EngineError) and "666" in str(outcomes[1])
    assert [o.outputs["y"][0, 0] for i, o in enumerate(outcomes) if i != 1] == [2.0, 4.0]
    await scheduler.stop()


async def test_wrong_output_row_count_fails_the_batch() -> None:
    scheduler, engine = await make(BATCHED)
    engine.drop_last_row = True
    with pytest.raises(EngineError, match="rows for a batch of 2"):
        await submit(scheduler, 2, 1.0)
    await scheduler.stop()


async def test_cancelled_request_leaves_the_queue_and_others_are_unaffected() -> None:
    scheduler, engine = await make(BATCHED)
    engine.gate = asyncio.Event()
    blocker = submit(scheduler, 1, 0.0)
    await settle()
    keep = submit(scheduler, 2, 1.0)
    gone = submit(scheduler, 3, 9.0)
    await settle()
    assert scheduler.num_enqueued() == 2
    gone.cancel()
    await settle()
    assert scheduler.num_enqueued() == 1
    engine.gate.set()
    await blocker
    result = await keep
    np.testing.assert_array_equal(result.outputs["y"], np.full((2, 2), 2.0))
    assert engine.batch_log == [1, 2]  # the cancelled rows never reached the engine
    await scheduler.stop()


async def test_a_member_cancelled_while_its_batch_runs_leaves_its_batch_mates_answered() -> None:
    scheduler, engine = await make(BATCHED)
    engine.gate = asyncio.Event()
    blocker = submit(scheduler, 1, 0.0)
    await settle()  # the first batch runs, held at the gate
    first, middle, last = (submit(scheduler, 1, v) for v in (1.0, 2.0, 3.0))
    await settle()
    engine.gate.set()
    engine.gate = asyncio.Event()  # the second batch (all three) will be held mid-run
    await blocker
    await settle(20)
    assert engine.batch_log == [1] and engine.running == 1  # the three are in the gate
    middle.cancel()  # its caller leaves while the batch computes
    await settle()
    engine.gate.set()
    answers = await asyncio.wait_for(asyncio.gather(first, last), timeout=5)
    assert [a.outputs["y"][0, 0] for a in answers] == [2.0, 6.0]
    assert middle.cancelled() and engine.batch_log == [1, 3]
    await scheduler.stop()


async def test_cancel_after_error_does_not_raise_invalid_state() -> None:
    scheduler, engine = await make(BATCHED)
    engine.fail = lambda x: True
    task = submit(scheduler, 1, 1.0)
    with pytest.raises(EngineError):
        await task
    task.cancel()
    engine.fail = None
    assert (await submit(scheduler, 1, 1.0)).outputs["y"].shape == (1, 2)
    await scheduler.stop()


async def test_deadline_passed_while_queued_is_never_computed(clock: FakeClock) -> None:
    scheduler, engine = await make(BATCHED, clock=clock)
    engine.gate = asyncio.Event()
    blocker = submit(scheduler, 1, 0.0)
    await settle()
    late = submit(scheduler, 1, 5.0, deadline_ns=1_000)
    on_time = submit(scheduler, 1, 6.0, deadline_ns=10**12)
    await settle()
    clock.advance_to(2_000)
    engine.gate.set()
    await blocker
    with pytest.raises(DeadlineExceeded):
        await late
    assert (await on_time).outputs["y"][0, 0] == 12.0
    assert engine.batch_log == [1, 1]
    await scheduler.stop()


async def test_queue_full_is_refused_at_once() -> None:
    config = BatchingConfig(
        max_batch_size=8, dynamic=True, default_policy=QueuePolicy(max_queue_size=2)
    )
    scheduler, engine = await make(config)
    engine.gate = asyncio.Event()
    running = submit(scheduler, 1, 0.0)
    await settle()
    queued = [submit(scheduler, 1, 1.0), submit(scheduler, 1, 2.0)]
    await settle()
    with pytest.raises(QueueFull, match="Exceeds maximum queue size"):
        await submit(scheduler, 1, 3.0)
    engine.gate.set()
    await asyncio.gather(running, *queued)
    await scheduler.stop()


async def test_request_above_max_batch_size_is_refused_when_splitting_is_off() -> None:
    scheduler, engine = await make(
        BatchingConfig(max_batch_size=8, dynamic=True, split_oversized=False)
    )
    with pytest.raises(InvalidInput, match="more than the 8 a batch of profile 0"):
        await submit(scheduler, 9, 0.0)
    assert engine.batch_log == []
    await scheduler.stop()


async def test_deadline_already_passed_on_arrival_is_refused_at_once() -> None:
    scheduler, engine = await make(BATCHED, clock=FakeClock(5_000))
    with pytest.raises(DeadlineExceeded, match="had passed when it arrived"):
        await submit(scheduler, 1, 0.0, deadline_ns=5_000)
    assert scheduler.num_enqueued() == 0 and engine.batch_log == []
    await scheduler.stop()


async def test_stop_with_work_in_flight_leaves_no_pending_future() -> None:
    scheduler, engine = await make(BATCHED, instances=2)
    engine.gate = asyncio.Event()
    tasks = [submit(scheduler, 1, 0.0)]
    await settle()
    tasks += [submit(scheduler, 1, float(i)) for i in range(1, 10)]
    await settle()
    assert engine.running == 2
    await scheduler.stop()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(o, ShuttingDown) for o in outcomes)
    with pytest.raises(ShuttingDown):
        await submit(scheduler, 1, 0.0)


async def test_instances_run_batches_concurrently() -> None:
    scheduler, engine = await make(BATCHED, instances=3)
    engine.gate = asyncio.Event()
    tasks = []
    for i in range(3):  # one at a time: each finds a free instance and leaves alone
        tasks.append(submit(scheduler, 1, float(i)))
        await settle()
    assert engine.running == 3
    engine.gate.set()
    await asyncio.gather(*tasks)
    await scheduler.stop()


async def test_an_answered_request_holds_no_memory_until_its_deadline(clock: FakeClock) -> None:
    """Its inputs (and, through its future, its outputs) are freed when it is answered, not
    when its deadline or queue timeout would have passed; the bookkeeping stays bounded."""
    config = BatchingConfig(
        max_batch_size=8,
        dynamic=True,
        max_queue_delay_s=0.001,
        default_policy=QueuePolicy(default_timeout_s=60.0),
    )
    scheduler, _ = await make(config, clock=clock)
    x = np.ones((2, 2), np.float32)
    alive = weakref.ref(x)
    task = asyncio.create_task(scheduler.infer({"x": x}, 2, deadline_ns=60 * 10**9))
    del x
    await settle()
    clock.advance(1_000_000)  # the delay window: the batch leaves
    result = await asyncio.wait_for(task, timeout=5)
    out = weakref.ref(result.outputs["y"])
    del result, task
    gc.collect()
    assert alive() is None and out() is None
    for _ in range(1000):  # answered requests leave no growing trail (full: no delay window)
        await asyncio.wait_for(scheduler.infer(rows(8, 1.0), 8, deadline_ns=60 * 10**9), 5)
    runner = next(iter(scheduler._runners.values()))
    assert len(runner.batcher._limits) <= 64 + 4
    await scheduler.stop()
