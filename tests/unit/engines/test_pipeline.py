"""The GPU stream pipeline (engines/cuda/pipeline.py) over the host double of CUDA: batches in
flight in their slots, finished on the wait thread or, for a launch that already waited for
its model (it returns no event), on the enqueue thread; a closed pipeline refuses work instead
of hanging."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from ferry.common.datatypes import DATATYPES
from ferry.engines.base import Feed, TensorSpec
from ferry.engines.cuda.pipeline import Launched, Slot, StreamPipeline
from ferry.engines.staging import gather_into
from tests.doubles import cuda_host

OUT = TensorSpec("y", DATATYPES["FP32"], (-1, 4))


def doubling_pipeline(depth: int, inline: bool, seen: list[str]) -> StreamPipeline:
    """y = 2x, "computed" on the stream between the copies in and out."""
    cuda = cuda_host.toolkit()
    pipeline = StreamPipeline("p", 0, cuda, depth, [OUT])
    for slot in pipeline.slots:
        slot.host = {"x": cuda.pinned(64 * 16), "y": cuda.pinned(64 * 16)}
        slot.gpu = {"x": cuda.device_buffer(64 * 16, 0), "y": cuda.device_buffer(64 * 16, 0)}

    def launch(feed: Feed, slot: Slot) -> Launched:
        seen.append(threading.current_thread().name)
        shape = (feed.rows, 4)
        gather_into(feed, "x", slot.host["x"].view(np.float32, shape))
        nbytes = feed.rows * 16
        slot.gpu["x"].copy_from(slot.host["x"], nbytes, pipeline.stream)
        x, y = slot.gpu["x"].view(np.float32, shape), slot.gpu["y"].view(np.float32, shape)
        pipeline.stream.enqueue(lambda: np.multiply(x, 2, out=y))
        slot.host["y"].copy_from(slot.gpu["y"], nbytes, pipeline.stream)
        return Launched(None if inline else pipeline.stream.record(), {"y": shape})

    pipeline.start(launch)
    return pipeline


@pytest.mark.asyncio
@pytest.mark.parametrize("inline", [False, True], ids=["wait-thread", "inline"])
async def test_each_batch_gets_its_own_rows_back(inline: bool) -> None:
    seen: list[str] = []
    pipeline = doubling_pipeline(2, inline, seen)
    if inline:  # finished on the enqueue thread: a batch handed to the wait thread would fail
        pipeline._waiter.stop()
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((n, 4)).astype(np.float32) for n in (1, 5, 64, 3, 17, 2)]
    try:
        results = await asyncio.gather(*(pipeline.run(Feed([{"x": b}], len(b))) for b in batches))
    finally:
        pipeline.close()
    for batch, result in zip(batches, results, strict=True):
        np.testing.assert_array_equal(result.outputs["y"], 2 * batch)
    assert set(seen) == {"ferry-p-enqueue"}
    assert pipeline.free_slots == 2


@pytest.mark.asyncio
async def test_a_closed_pipeline_refuses_a_batch_instead_of_hanging() -> None:
    pipeline = doubling_pipeline(2, True, [])
    pipeline.close()
    with pytest.raises(RuntimeError, match="ferry-p-enqueue is stopped"):
        await asyncio.wait_for(pipeline.run(Feed([{"x": np.ones((1, 4), np.float32)}], 1)), 5)


def test_set_up_runs_on_the_enqueue_thread_and_its_errors_reach_the_caller() -> None:
    pipeline = doubling_pipeline(1, False, [])
    try:
        assert pipeline.call(lambda: threading.current_thread().name) == "ferry-p-enqueue"
        with pytest.raises(ZeroDivisionError):
            pipeline.call(lambda: 1 // 0)
    finally:
        pipeline.close()
