"""Oversized requests are split into chunks that batch like any rows and come back whole and in
order; preserve_ordering answers in arrival order whatever order batches finish in."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ferry.common.errors import EngineError
from ferry.engines.fake import FakeEngine
from ferry.scheduler import BatchingConfig, ModelScheduler
from ferry.scheduler.request import InferenceResult
from tests.unit.scheduler.conftest import settle, started

pytestmark = pytest.mark.asyncio


async def make(config: BatchingConfig, instances: int = 1) -> tuple[ModelScheduler, FakeEngine]:
    return await started(config, instances=instances, name="split")


def ask(scheduler: ModelScheduler, rows: int, start: float) -> asyncio.Task[InferenceResult]:
    x = (start + np.arange(rows, dtype=np.float32))[:, None].repeat(2, axis=1)
    return asyncio.create_task(scheduler.infer({"x": x}, rows))



async def test_an_oversized_request_is_split_and_joined_in_order() -> None:
    scheduler, engine = await make(BatchingConfig(max_batch_size=8, dynamic=True))
    result = await ask(scheduler, 21, 0.0)
    expected = 2 * np.arange(21, dtype=np.float32)[:, None].repeat(2, axis=1)
    np.testing.assert_array_equal(result.outputs["y"], expected)
    assert sorted(engine.batch_log) == [7, 7, 7]  # as few chunks as possible, evenly sized
    assert scheduler.stats.inference_count == 21
    assert scheduler.stats.queue.count == 1  # one request, however many chunks
    compute = scheduler.stats.compute_infer
    assert compute.count == 1 and compute.ns == 3 * 2  # FakeEngine: 2 ns per batch, 3 chunks
    await scheduler.stop()


async def test_chunks_share_batches_with_other_requests() -> None:
    scheduler, engine = await make(BatchingConfig(max_batch_size=8, dynamic=True))
    engine.gate = asyncio.Event()
    blocker = ask(scheduler, 1, -1.0)
    await settle()
    big = ask(scheduler, 12, 0.0)  # chunks of 6 and 6
    small = ask(scheduler, 2, 100.0)
    await settle()
    engine.gate.set()
    await blocker
    big_result, small_result = await asyncio.gather(big, small)
    assert engine.batch_log == [1, 6, 8]  # the second chunk rides with the small request
    np.testing.assert_array_equal(big_result.outputs["y"][:, 0], 2 * np.arange(12))
    np.testing.assert_array_equal(small_result.outputs["y"][:, 0], [200.0, 202.0])
    await scheduler.stop()


async def test_a_failing_chunk_fails_the_request_and_withdraws_the_rest() -> None:
    scheduler, engine = await make(BatchingConfig(max_batch_size=4, dynamic=True))
    engine.gate = asyncio.Event()
    blocker = ask(scheduler, 1, -1.0)
    await settle()
    engine.fail = lambda x: bool((x == 4.0).any())  # poisons the second chunk
    doomed = ask(scheduler, 12, 0.0)
    await settle()
    engine.gate.set()
    await blocker
    with pytest.raises(EngineError):
        await doomed
    await settle()
    assert scheduler.num_enqueued() == 0
    assert sum(engine.batch_log) <= 1 + 12
    engine.fail = None
    assert (await ask(scheduler, 3, 1.0)).outputs["y"].shape == (3, 2)
    await scheduler.stop()


async def test_cancelling_a_split_request_withdraws_every_chunk() -> None:
    scheduler, engine = await make(BatchingConfig(max_batch_size=4, dynamic=True))
    engine.gate = asyncio.Event()
    blocker = ask(scheduler, 1, -1.0)
    await settle()
    big = ask(scheduler, 16, 0.0)
    await settle()
    assert scheduler.num_enqueued() == 4
    big.cancel()
    await settle()
    assert scheduler.num_enqueued() == 0
    engine.gate.set()
    await blocker
    assert engine.batch_log == [1]
    await scheduler.stop()


async def test_preserve_ordering_answers_in_arrival_order() -> None:
    config = BatchingConfig(max_batch_size=4, dynamic=True, preserve_ordering=True)
    scheduler, engine = await make(config, instances=2)
    engine.gate = asyncio.Event()
    first = ask(scheduler, 1, 0.0)  # held on instance 0
    await settle()
    finished: list[str] = []
    first.add_done_callback(lambda _: finished.append("first"))
    engine.gate.set()  # lets everything through ...
    engine.gate = asyncio.Event()  # ... but the next batches wait again
    second = ask(scheduler, 1, 1.0)
    second.add_done_callback(lambda _: finished.append("second"))
    await settle()
    await first
    engine.gate.set()
    await second
    assert finished == ["first", "second"]

    # Now make the later request finish first: it must still be answered second.
    slow_gate = asyncio.Event()
    engine.gate = slow_gate
    early = ask(scheduler, 1, 10.0)  # held
    await settle()
    engine.gate = None  # the next batch runs at once on the other instance
    late = ask(scheduler, 1, 11.0)
    order: list[str] = []
    early.add_done_callback(lambda _: order.append("early"))
    late.add_done_callback(lambda _: order.append("late"))
    await settle()
    assert engine.value_log[-1] == [11.0]  # `late` has been computed ...
    assert not late.done()  # ... but waits for `early`
    slow_gate.set()
    await asyncio.gather(early, late)
    assert order == ["early", "late"]
    await scheduler.stop()


async def test_preserve_ordering_releases_after_an_earlier_error_or_cancel() -> None:
    config = BatchingConfig(max_batch_size=4, dynamic=True, preserve_ordering=True)
    scheduler, engine = await make(config, instances=2)
    engine.gate = asyncio.Event()
    gone = ask(scheduler, 1, 0.0)
    await settle()
    engine.gate = None
    after = ask(scheduler, 1, 1.0)
    await settle()
    assert not after.done()
    gone.cancel()
    result = await asyncio.wait_for(after, timeout=5)
    assert result.outputs["y"][0, 0] == 2.0
    await scheduler.stop()
