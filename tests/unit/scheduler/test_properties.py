"""Property: under any mix of sizes, shapes, cancellations, deadlines and engine failures,
every request ends exactly once, with its own rows in order, and no batch exceeds the limit."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest.mock import patch

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.common.errors import DeadlineExceeded, EngineError, Overloaded, QueueTimeout
from ferry.engines.base import Device, Profile, ShapeRange
from ferry.engines.fake import FakeEngine
from ferry.scheduler import (
    Batch,
    Batcher,
    BatchingConfig,
    CutOutput,
    ModelScheduler,
    PaddedInput,
    Padding,
    QueuePolicy,
)
from ferry.scheduler.clock import FakeClock
from ferry.scheduler.request import InferenceRequest
from ferry.scheduler.runner import ProfileRunner
from ferry.scheduler.slo import FIRST_SKIPPED, LEARNED_AFTER, SloConfig

BUDGET_NS = 10_000_000
"""The latency budget of the scenarios with a controller."""

request_plan = st.tuples(
    st.integers(min_value=1, max_value=6),  # rows
    st.sampled_from([1, 2, 3]),  # width (non-batch shape)
    st.integers(min_value=0, max_value=3),  # event-loop turns before the next arrival
    st.sampled_from(["keep", "keep", "keep", "cancel", "cancel", "expire", "poison"]),
    st.integers(min_value=0, max_value=6),  # a cancel: arrivals later (6: once all arrived)
    st.sampled_from([False, False, True]),  # let the batches running now finish
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plans=st.lists(request_plan, min_size=3, max_size=40),
    max_batch=st.integers(min_value=6, max_value=16),
    instances=st.integers(min_value=1, max_value=3),
    now=st.booleans(),
    turns=st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=8),
    budget=st.booleans(),
)
def test_every_request_gets_exactly_its_own_rows(
    plans: list[tuple[int, int, int, str, int, bool]],
    max_batch: int,
    instances: int,
    now: bool,
    turns: list[int],
    budget: bool,
) -> None:
    """Batches are held at the engine's gate and released at random points, and a cancelled
    caller leaves at a random later point: while queued, while its batch forms or while its
    batch runs. Whatever happens to its batch-mates, every other request is answered.
    `now`: instances may run batches on the loop, so an idle model answers in the caller's
    task (ModelScheduler's direct path); the invariants hold either way. `budget`: a latency
    controller taught that rows are dear refuses some at arrival; a refused request is refused,
    never lost, and the rest hold as without it."""
    asyncio.run(_scenario(plans, max_batch, instances, now, turns, budget))


async def _scenario(
    plans: list[tuple[int, int, int, str, int, bool]],
    max_batch: int,
    instances: int,
    direct: bool,
    turns: list[int],
    budget: bool = False,
) -> None:
    engine = FakeEngine(now=direct)
    engine.gate = asyncio.Event()
    # Rows whose value is negative poison any batch they are in.
    engine.fail = lambda x: bool((x < 0).any())
    clock = FakeClock()
    scheduler = ModelScheduler(
        "prop",
        [engine.create_instance(f"i{i}", Device()) for i in range(instances)],
        BatchingConfig(
            max_batch_size=max_batch,
            dynamic=True,
            slo=SloConfig(BUDGET_NS / 1e9) if budget else None,
        ),
        clock=clock,
    )
    await scheduler.start()
    if budget:
        slo = next(iter(scheduler._runners.values())).batcher.slo
        assert slo is not None
        for i in range(FIRST_SKIPPED + LEARNED_AFTER):  # a row costs 3 ms
            slo.batch_ran((2, 6)[i % 2], (2, 6)[i % 2] * 0.003, 0)

    def release() -> None:
        assert engine.gate is not None
        gate, engine.gate = engine.gate, asyncio.Event()
        gate.set()

    tasks = []
    cancels: list[tuple[int, asyncio.Task[Any]]] = []  # (at which arrival, whom)
    for index, (rows, width, pause, fate, later, free) in enumerate(plans):
        base = -1000.0 - index if fate == "poison" else float(index * 100)
        x = (base + np.arange(rows * width, dtype=np.float32)).reshape(rows, width)
        deadline = 0 if fate == "expire" else None
        task = asyncio.create_task(scheduler.infer({"x": x}, rows, deadline_ns=deadline))
        tasks.append((task, x, fate))
        if fate == "cancel":
            cancels.append((index + later if later < 6 else len(plans), task))
        for _ in range(pause):
            await asyncio.sleep(0)
        for _, due in [c for c in cancels if c[0] <= index]:
            due.cancel()
        cancels = [c for c in cancels if c[0] > index]
        if free:
            release()
        clock.advance(1)
    # What is left: cancels and gate releases interleaved at random turns.
    for step, wait in enumerate(turns):
        for _ in range(wait):
            await asyncio.sleep(0)
        if step < len(cancels):
            cancels[step][1].cancel()
        release()
    for _, late in cancels:
        late.cancel()
    engine.gate.set()
    engine.gate = None
    # Time goes on after the last arrival: past any queue delay a latency controller chose, so
    # the last requests' batch leaves (the scheduler's clock is the test's, and requests whose
    # tasks have not run yet queue only now).
    running = [t for t, _, _ in tasks]
    for _ in range(1000):
        if all(t.done() for t in running):
            break
        await asyncio.sleep(0)
        clock.advance(BUDGET_NS // 100)
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(t for t, _, _ in tasks), return_exceptions=True), timeout=10
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
            assert fate == "poison"  # a batch-mate's poison never fails a request
        elif isinstance(outcome, Overloaded):
            assert budget  # refused at arrival by the latency controller
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


# ---- the full scheduler: profiles, padding, priorities, timeouts, deadlines, splitting ----------

SHORT = Profile(0, {"x": ShapeRange((1,), (3,), (3,))})
LONG = Profile(1, {"x": ShapeRange((1,), (6,), (6,))})

arrival = st.fixed_dictionaries(
    {
        "rows": st.sampled_from([1, 1, 2, 3, 5, 8, 20]),
        "width": st.sampled_from([1, 1, 2, 2, 3, 5]),
        "priority": st.integers(min_value=0, max_value=3),
        "gap_us": st.integers(min_value=0, max_value=1500),
        "fate": st.sampled_from(["keep", "keep", "keep", "cancel", "deadline"]),
        "release": st.sampled_from([False] * 5 + [True]),  # let running batches finish
    }
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plans=st.lists(arrival, min_size=1, max_size=40),
    max_batch=st.integers(min_value=4, max_value=12),
    levels=st.sampled_from([1, 2, 2, 3]),
    timeouts_ms=st.lists(st.sampled_from([0, 3, 8, 50]), min_size=3, max_size=3),
    padded=st.booleans(),
    reserve=st.booleans(),
    now=st.booleans(),
)
def test_priorities_limits_and_rows_hold_under_any_arrivals(
    plans: list[dict[str, Any]],
    max_batch: int,
    levels: int,
    timeouts_ms: list[int],
    padded: bool,
    reserve: bool,
    now: bool,
) -> None:
    formed: list[tuple[list[int], list[int]]] = []  # (levels taken, levels left waiting)
    original = Batcher._take

    def watched(self: Batcher, head: InferenceRequest) -> Batch:
        batch = original(self, head)
        waiting = [r.level for r in self._queue._where]
        formed.append(([r.level for r in batch.requests], waiting))
        return batch

    original_now = ProfileRunner.serve_now

    def watched_now(self: ProfileRunner, request: InferenceRequest) -> bool:
        waiting = [r.level for r in self.batcher._queue._where]
        served = original_now(self, request)
        if served:  # a batch of its own that skipped the queue
            formed.append(([request.level], waiting))
        return served

    with (
        patch.object(Batcher, "_take", watched),
        patch.object(ProfileRunner, "serve_now", watched_now),
    ):
        asyncio.run(_full_scenario(plans, max_batch, levels, timeouts_ms, padded, reserve, now))
    # Priority order: a batch holds one level, and none leaves while a higher one waits.
    for taken, waiting in formed:
        assert len(set(taken)) == 1, taken
        assert not waiting or taken[0] <= min(waiting), (taken, waiting)


async def _full_scenario(
    plans: list[dict[str, Any]],
    max_batch: int,
    levels: int,
    timeouts_ms: list[int],
    padded: bool,
    reserve: bool,
    direct: bool,
) -> None:
    """Two profiles; with `reserve` (and 2+ levels) each has a second instance reserved for
    level 1, which must run nothing else. `direct`: instances offer `run_now`."""
    clock = FakeClock()
    reserve = reserve and levels >= 2
    config = BatchingConfig(
        max_batch_size=max_batch,
        dynamic=True,
        priority_levels=levels,
        priority_policies={
            level: QueuePolicy(default_timeout_s=timeouts_ms[level - 1] / 1e3)
            for level in range(1, levels + 1)
        },
        reserved_instances=1 if reserve else 0,
    )
    padding = (
        Padding({"x": PaddedInput(0.0, (0,))}, {"y": CutOutput("x", (0,))}) if padded else None
    )
    engine = FakeEngine(now=direct)
    engine.gate = asyncio.Event()
    instances = [
        engine.create_instance("short", Device(), SHORT),
        engine.create_instance("long", Device(), LONG),
    ]
    if reserve:  # after the others: the last of each profile's instances is the reserved one
        instances += [
            engine.create_instance("short_reserved", Device(), SHORT),
            engine.create_instance("long_reserved", Device(), LONG),
        ]
    scheduler = ModelScheduler(
        "full",
        instances,
        config,
        padding=padding,
        clock=clock,
    )
    await scheduler.start()
    tasks: list[asyncio.Task[Any]] = []
    arrived: list[int] = []
    for index, plan in enumerate(plans):
        rows, width = plan["rows"], plan["width"]
        x = (index * 1000.0 + np.arange(rows, dtype=np.float32))[:, None].repeat(width, axis=1)
        priority = plan["priority"] if plan["priority"] <= levels else 0
        deadline = clock.now() + 3_000_000 if plan["fate"] == "deadline" else None
        arrived.append(clock.now())
        tasks.append(
            asyncio.create_task(
                scheduler.infer({"x": x}, rows, priority=priority, deadline_ns=deadline)
            )
        )
        await asyncio.sleep(0)
        if plan["fate"] == "cancel":
            tasks[-1].cancel()
        clock.advance(plan["gap_us"] * 1_000)
        if plan["release"]:
            gate, engine.gate = engine.gate, asyncio.Event()
            gate.set()
        for _ in range(4):
            await asyncio.sleep(0)
    engine.gate.set()
    engine.gate = None
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=30)
    await scheduler.stop()

    rows_run: dict[int, int] = {}
    for (profile_index, shape), firsts in zip(engine.shapes_log, engine.value_log, strict=True):
        assert shape[0] <= max_batch
        assert shape[1] <= (SHORT, LONG)[profile_index].ranges["x"].max[0]
        for value in firsts:
            rows_run[int(value) // 1000] = rows_run.get(int(value) // 1000, 0) + 1

    for index, (plan, task, outcome) in enumerate(zip(plans, tasks, outcomes, strict=True)):
        assert task.done()
        level = config.level_of(plan["priority"] if plan["priority"] <= levels else 0)
        timeout_ns = timeouts_ms[level] * 1_000_000
        if isinstance(outcome, asyncio.CancelledError):
            assert plan["fate"] == "cancel"
        elif isinstance(outcome, QueueTimeout):
            assert timeout_ns and clock.now() - arrived[index] >= timeout_ns
        elif isinstance(outcome, DeadlineExceeded):
            assert plan["fate"] == "deadline" and clock.now() - arrived[index] >= 3_000_000
        elif isinstance(outcome, BaseException):
            raise AssertionError(f"request {index}: unexpected {outcome!r}")
        else:
            x = (index * 1000.0 + np.arange(plan["rows"], dtype=np.float32))[:, None]
            np.testing.assert_array_equal(outcome.outputs["y"], 2 * x.repeat(plan["width"], axis=1))
            if timeout_ns:
                assert outcome.queue_ns < timeout_ns  # never waited past its policy
            assert rows_run.get(index) == plan["rows"]  # each row computed exactly once
    for instance in instances[2:]:  # reserved: requests of the highest level only
        for value in instance.values:
            plan = plans[int(value) // 1000]
            assert config.level_of(plan["priority"] if plan["priority"] <= levels else 0) == 0
