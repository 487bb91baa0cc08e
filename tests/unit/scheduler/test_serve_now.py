"""An idle model answers a request that would leave alone at once in the caller's own task, with
no queue, pump or batch task in between (ProfileRunner.serve_now); anything that could change
the request's batch or its turn sends it through the queue as before."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ferry.common.errors import EngineError
from ferry.engines.fake import FakeEngine
from ferry.scheduler import BatchingConfig, ModelScheduler
from ferry.scheduler.clock import FakeClock
from ferry.scheduler.request import InferenceResult
from ferry.scheduler.slo import SloConfig
from tests.unit.scheduler.conftest import MS, settle, started
from tests.unit.scheduler.conftest import ask as send


async def make(
    config: BatchingConfig, clock: FakeClock, instances: int = 1
) -> tuple[ModelScheduler, FakeEngine]:
    """Instances that offer run_now; the pumps parked with them."""
    return await started(
        config, instances=instances, clock=clock, engine=FakeEngine(now=True), name="now"
    )


def ask(
    scheduler: ModelScheduler, value: float, rows: int = 1, **kw: object
) -> asyncio.Task[InferenceResult]:
    return send(scheduler, value, rows, **kw)


@pytest.mark.asyncio
async def test_an_idle_model_without_batching_delay_answers_in_the_callers_task() -> None:
    scheduler, engine = await make(BatchingConfig(max_batch_size=8, dynamic=True), FakeClock())
    try:
        task = ask(scheduler, 3.0)
        result = await task
        np.testing.assert_array_equal(result.outputs["y"], np.full((1, 2), 6.0))
        assert engine.now_tasks == [task]  # ran inside the caller's task, not a batch task
        assert result.queue_ns == 0
        stats = scheduler.stats
        assert (stats.queue.count, stats.execution_count, stats.inference_count) == (1, 1, 1)
    finally:
        await scheduler.stop()


@pytest.mark.asyncio
async def test_a_request_that_would_wait_for_company_still_queues_and_batches() -> None:
    clock = FakeClock()
    config = BatchingConfig(max_batch_size=8, dynamic=True, max_queue_delay_s=0.001)
    scheduler, engine = await make(config, clock)
    try:
        first, second = ask(scheduler, 1.0), ask(scheduler, 2.0)
        await settle()
        assert not first.done() and not second.done()  # waiting for the delay window
        clock.advance(2 * MS)
        await asyncio.gather(first, second)
        assert engine.batch_log == [2]  # they shared one batch
        assert None not in engine.now_tasks and first not in engine.now_tasks
    finally:
        await scheduler.stop()


@pytest.mark.asyncio
async def test_a_request_never_skips_requests_already_waiting() -> None:
    """A full batch would leave at once on its own, but a higher-priority request is waiting
    for its delay window: the full batch waits its turn instead of running first."""
    clock = FakeClock()
    config = BatchingConfig(
        max_batch_size=2,
        dynamic=True,
        max_queue_delay_s=0.001,
        priority_levels=2,
        default_priority=2,
    )
    scheduler, engine = await make(config, clock)
    try:
        high = ask(scheduler, 1.0, priority=1)
        await settle()
        low_full = ask(scheduler, 2.0, rows=2, priority=2)
        await settle()
        assert not low_full.done()  # it did not jump ahead of the waiting high-priority one
        clock.advance(2 * MS)
        await asyncio.gather(high, low_full)
        assert [row[0] for row in engine.value_log] == [1.0, 2.0]  # high ran first
    finally:
        await scheduler.stop()


@pytest.mark.asyncio
async def test_an_instance_reserved_for_high_priority_does_not_answer_lower_levels() -> None:
    config = BatchingConfig(
        max_batch_size=8, dynamic=True, priority_levels=2, default_priority=2, reserved_instances=1
    )
    scheduler, engine = await make(config, FakeClock(), instances=2)
    try:
        general, reserved = engine.instances
        engine.gate = asyncio.Event()  # holds batches too big to run on the loop
        busy = ask(scheduler, 4.0, rows=3, priority=2)  # occupies the general instance
        await settle()
        low = ask(scheduler, 5.0, priority=2)  # small, but only the reserved instance is free
        await settle()
        assert not low.done() and reserved.values == []
        high = ask(scheduler, 7.0, priority=1)
        await high
        assert reserved.values == [7.0]  # (through the queue: `low` waits in it)
        engine.gate.set()
        await asyncio.gather(busy, low)
        assert general.values == [4.0, 4.0, 4.0, 5.0]
    finally:
        await scheduler.stop()


@pytest.mark.asyncio
async def test_a_batch_that_fails_on_the_direct_path_fails_only_its_own_request() -> None:
    scheduler, engine = await make(BatchingConfig(max_batch_size=8, dynamic=True), FakeClock())
    engine.fail = lambda x: bool((x < 0).any())  # negative rows poison their batch
    try:
        poisoned = ask(scheduler, -1.0)
        with pytest.raises(EngineError, match="failed on purpose"):
            await poisoned
        healthy = ask(scheduler, 2.0)
        result = await healthy
        np.testing.assert_array_equal(result.outputs["y"], np.full((1, 2), 4.0))
        assert engine.now_tasks == [poisoned, healthy]  # both took the direct path
        assert scheduler.healthy
        assert (scheduler.stats.execution_count, scheduler.stats.inference_count) == (1, 1)
    finally:
        await scheduler.stop()


@pytest.mark.asyncio
async def test_a_request_answered_in_the_callers_task_still_counts_as_an_arrival() -> None:
    """A latency controller sizes batches and delays from the arrival rate: the requests an
    idle model answers at once arrive like any other."""
    clock = FakeClock()
    config = BatchingConfig(max_batch_size=8, dynamic=True, slo=SloConfig(0.010))
    scheduler, engine = await make(config, clock)
    try:
        for i in range(60):  # one 2-row request every 10 ms: 200 rows/s
            await ask(scheduler, float(i), rows=2)
            clock.advance(10 * MS)
        assert len(engine.now_tasks) == 60  # every one answered in its caller's task
        slo = next(iter(scheduler._runners.values())).batcher.slo
        assert slo is not None
        assert slo.arrival_rate == pytest.approx(200, rel=0.2)
    finally:
        await scheduler.stop()
