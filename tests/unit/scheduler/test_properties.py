"""Property: under any mix of sizes, shapes, cancellations, deadlines and engine failures,
every request ends exactly once, with its own rows in order, and no batch exceeds the limit."""

from __future__ import annotations

import asyncio

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import DeadlineExceeded, EngineError
from engines.base import Device
from engines.fake import FakeEngine
from scheduler import BatchingConfig, ModelScheduler

request_plan = st.tuples(
    st.integers(min_value=1, max_value=6),  # rows
    st.sampled_from([1, 2, 3]),  # width (non-batch shape)
    st.integers(min_value=0, max_value=3),  # event-loop turns before the next arrival
    st.sampled_from(["keep", "keep", "keep", "cancel", "expire", "poison"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plans=st.lists(request_plan, min_size=1, max_size=40),
    max_batch=st.integers(min_value=6, max_value=16),
    instances=st.integers(min_value=1, max_value=3),
)
def test_every_request_gets_exactly_its_own_rows(
    plans: list[tuple[int, int, int, str]], max_batch: int, instances: int
) -> None:
    asyncio.run(_scenario(plans, max_batch, instances))


async def _scenario(plans: list[tuple[int, int, int, str]], max_batch: int, instances: int) -> None:
    engine = FakeEngine()
    # Rows whose value is negative poison any batch they are in.
    engine.fail = lambda x: bool((x < 0).any())
    now = [0]
    scheduler = ModelScheduler(
        "prop",
        [engine.create_instance(f"i{i}", Device()) for i in range(instances)],
        BatchingConfig(max_batch_size=max_batch, dynamic=True),
        clock=lambda: now[0],
    )
    await scheduler.start()
    tasks = []
    for index, (rows, width, pause, fate) in enumerate(plans):
        base = -1000.0 - index if fate == "poison" else float(index * 100)
        x = (base + np.arange(rows * width, dtype=np.float32)).reshape(rows, width)
        deadline = 0 if fate == "expire" else None
        task = asyncio.create_task(
            scheduler.infer({"x": x}, rows, ("x", (width,)), deadline_ns=deadline)
        )
        tasks.append((task, x, fate))
        for _ in range(pause):
            await asyncio.sleep(0)
        if fate == "cancel":
            task.cancel()
        now[0] += 1
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(t for t, _, _ in tasks), return_exceptions=True), timeout=30
    )
    await scheduler.stop()

    assert max(engine.batch_log, default=0) <= max_batch
    for (task, x, fate), outcome in zip(tasks, outcomes, strict=True):
        assert task.done()
        if isinstance(outcome, asyncio.CancelledError):
            assert fate == "cancel"
        elif isinstance(outcome, DeadlineExceeded):
            assert fate == "expire"
        elif isinstance(outcome, EngineError):
            # only a poisoned request (itself or a batch-mate) can make the engine fail
            assert any(f == "poison" for _, _, f in tasks)
        elif isinstance(outcome, BaseException):
            raise AssertionError(f"unexpected outcome {outcome!r}")
        else:
            assert fate in ("keep", "cancel"), fate  # a cancel may arrive after completion
            np.testing.assert_array_equal(outcome.outputs["y"], x * 2.0)
    # Rows computed = rows answered, plus at most the rows of callers who cancelled while
    # their batch was running; nothing is computed twice.
    pairs = list(zip(tasks, outcomes, strict=True))
    succeeded = sum(x.shape[0] for (_, x, _), o in pairs if not isinstance(o, BaseException))
    cancelled = sum(x.shape[0] for (_, x, _), o in pairs if isinstance(o, asyncio.CancelledError))
    assert succeeded <= scheduler.stats.inference_count <= succeeded + cancelled
