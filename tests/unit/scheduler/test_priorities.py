"""Priority levels and queue policies, as Triton defines them: order, timeouts (REJECT and
DELAY), per-request timeout override, per-level queue size, and the bound on queued bytes."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ferry.common.errors import InvalidInput, QueueFull, QueueTimeout
from ferry.engines.base import Device
from ferry.engines.fake import FakeEngine, FakeInstance
from ferry.scheduler import BatchingConfig, ModelScheduler, QueuePolicy, TimeoutAction
from ferry.scheduler.clock import FakeClock
from tests.unit.scheduler.conftest import MS, ask, settle, started, values

pytestmark = pytest.mark.asyncio


async def make(config: BatchingConfig, clock: FakeClock) -> tuple[ModelScheduler, FakeEngine]:
    return await started(config, clock=clock, name="prio")


TWO_LEVELS = BatchingConfig(max_batch_size=1, dynamic=True, priority_levels=2, default_priority=2)


async def test_higher_priority_is_served_first() -> None:
    clock = FakeClock()
    scheduler, engine = await make(TWO_LEVELS, clock)
    engine.gate = asyncio.Event()
    blocker = ask(scheduler, 0.0)
    await settle()
    low = [ask(scheduler, 10.0 + i, priority=2) for i in range(3)]
    default = ask(scheduler, 20.0)  # priority 0 = default level 2
    high = [ask(scheduler, 30.0 + i, priority=1) for i in range(2)]
    await settle()
    engine.gate.set()
    await asyncio.gather(blocker, *low, default, *high)
    assert values(engine) == [0.0, 30.0, 31.0, 10.0, 11.0, 12.0, 20.0]
    await scheduler.stop()


async def test_priority_outside_the_levels_is_refused() -> None:
    scheduler, _ = await make(TWO_LEVELS, FakeClock())
    with pytest.raises(InvalidInput, match=r"priority 3 is outside the model's levels 1..2"):
        await ask(scheduler, 1.0, priority=3)
    await scheduler.stop()


async def test_priority_is_ignored_by_a_model_without_levels() -> None:
    scheduler, _ = await make(BatchingConfig(max_batch_size=4, dynamic=True), FakeClock())
    result = await ask(scheduler, 1.0, priority=7)
    assert result.outputs["y"][0, 0] == 2.0
    await scheduler.stop()


async def test_reject_timeout_fails_the_waiting_request_on_time() -> None:
    clock = FakeClock()
    config = BatchingConfig(
        max_batch_size=1,
        dynamic=True,
        default_policy=QueuePolicy(default_timeout_s=0.005),
    )
    scheduler, engine = await make(config, clock)
    engine.gate = asyncio.Event()
    blocker = ask(scheduler, 0.0)
    await settle()
    waiting = ask(scheduler, 1.0)
    await settle()
    clock.advance_to(4 * MS)
    await settle()
    assert not waiting.done()
    clock.advance_to(5 * MS)  # the instance is still busy: the timeout is enforced anyway
    with pytest.raises(QueueTimeout, match="Request timeout expired"):
        await waiting
    assert scheduler.num_enqueued() == 0
    engine.gate.set()
    await blocker
    assert values(engine) == [0.0]  # the timed-out request never ran
    await scheduler.stop()


async def test_delay_action_moves_a_late_request_behind_its_level_but_ahead_of_lower() -> None:
    clock = FakeClock()
    config = BatchingConfig(
        max_batch_size=1,
        dynamic=True,
        priority_levels=2,
        priority_policies={
            1: QueuePolicy(timeout_action=TimeoutAction.DELAY, default_timeout_s=0.001)
        },
    )
    scheduler, engine = await make(config, clock)
    engine.gate = asyncio.Event()
    blocker = ask(scheduler, 0.0)
    await settle()
    late = ask(scheduler, 1.0, priority=1)
    await settle()
    clock.advance_to(2 * MS)  # `late` passes its timeout: delayed, not rejected
    low = ask(scheduler, 3.0, priority=2)
    fresh = ask(scheduler, 2.0, priority=1)
    await settle()
    engine.gate.set()
    await asyncio.gather(blocker, late, fresh, low)
    assert values(engine) == [0.0, 2.0, 1.0, 3.0]
    await scheduler.stop()


async def test_request_timeout_override_only_shortens_the_default() -> None:
    clock = FakeClock()
    config = BatchingConfig(
        max_batch_size=1,
        dynamic=True,
        default_policy=QueuePolicy(default_timeout_s=0.010, allow_timeout_override=True),
    )
    scheduler, engine = await make(config, clock)
    engine.gate = asyncio.Event()
    blocker = ask(scheduler, 0.0)
    await settle()
    short = ask(scheduler, 1.0, timeout_s=0.002)
    long = ask(scheduler, 2.0, timeout_s=1.0)  # asks for more than the default: gets 10 ms
    await settle()
    clock.advance_to(3 * MS)
    with pytest.raises(QueueTimeout):
        await short
    assert not long.done()
    clock.advance_to(10 * MS)
    with pytest.raises(QueueTimeout):
        await long
    engine.gate.set()
    await blocker
    await scheduler.stop()


async def test_request_timeout_is_ignored_without_override() -> None:
    clock = FakeClock()
    scheduler, engine = await make(BatchingConfig(max_batch_size=1, dynamic=True), clock)
    engine.gate = asyncio.Event()
    blocker = ask(scheduler, 0.0)
    await settle()
    patient = ask(scheduler, 1.0, timeout_s=0.001)
    await settle()
    clock.advance_to(50 * MS)
    engine.gate.set()
    assert (await patient).outputs["y"][0, 0] == 2.0
    await blocker
    await scheduler.stop()


async def test_queue_size_is_bounded_per_level() -> None:
    clock = FakeClock()
    config = BatchingConfig(
        max_batch_size=1,
        dynamic=True,
        priority_levels=2,
        priority_policies={2: QueuePolicy(max_queue_size=1)},
    )
    scheduler, engine = await make(config, clock)
    engine.gate = asyncio.Event()
    blocker = ask(scheduler, 0.0, priority=1)
    await settle()
    queued = ask(scheduler, 1.0, priority=2)
    await settle()
    with pytest.raises(QueueFull, match="Exceeds maximum queue size"):
        await ask(scheduler, 2.0, priority=2)
    others = [ask(scheduler, 3.0 + i, priority=1) for i in range(3)]  # level 1 is unbounded
    await settle()
    engine.gate.set()
    await asyncio.gather(blocker, queued, *others)
    await scheduler.stop()


async def test_queued_bytes_are_bounded_and_freed() -> None:
    clock = FakeClock()
    config = BatchingConfig(max_batch_size=1, dynamic=True, max_queue_bytes=100)
    scheduler, engine = await make(config, clock)
    engine.gate = asyncio.Event()
    blocker = ask(scheduler, 0.0, width=4)  # running: not queued
    await settle()
    first = ask(scheduler, 1.0, width=16)  # 64 bytes
    await settle()
    assert scheduler.queued_bytes() == 64
    with pytest.raises(QueueFull, match=r"Exceeds maximum queue bytes.*limit of 100"):
        await ask(scheduler, 2.0, width=16)
    small = ask(scheduler, 3.0, width=8)  # 32 bytes: 96 in all, fits
    await settle()
    engine.gate.set()
    await asyncio.gather(blocker, first, small)
    assert scheduler.queued_bytes() == 0
    assert (await ask(scheduler, 4.0, width=16)).outputs["y"].shape == (1, 16)
    await scheduler.stop()


async def test_lower_priority_does_not_fill_a_batch_while_higher_priority_waits() -> None:
    clock = FakeClock()
    config = BatchingConfig(max_batch_size=8, dynamic=True, priority_levels=2)
    scheduler, engine = await make(config, clock)
    engine.gate = asyncio.Event()
    blocker = ask(scheduler, 0.0)
    await settle()
    first = ask(scheduler, 1.0, width=2, priority=1)
    other_shape = ask(scheduler, 2.0, width=3, priority=1)
    low_same_shape = ask(scheduler, 3.0, width=2, priority=2)
    await settle()
    engine.gate.set()
    await asyncio.gather(blocker, first, other_shape, low_same_shape)
    # `low_same_shape` could have ridden with `first`, but `other_shape` (higher) was waiting.
    assert engine.value_log == [[0.0], [1.0], [2.0], [3.0]]
    await scheduler.stop()


async def test_batches_never_mix_priority_levels() -> None:
    clock = FakeClock()
    config = BatchingConfig(max_batch_size=8, dynamic=True, priority_levels=2)
    scheduler, engine = await make(config, clock)
    engine.gate = asyncio.Event()
    blocker = ask(scheduler, 0.0)
    await settle()
    tasks = [ask(scheduler, 1.0, priority=1), ask(scheduler, 3.0, priority=2)]
    await settle()
    engine.gate.set()
    await asyncio.gather(blocker, *tasks)
    # The high-priority request runs alone rather than computing a batch of lower ones.
    assert engine.value_log == [[0.0], [1.0], [3.0]]
    await scheduler.stop()


async def two_instances(
    reserved: int, now: bool = False
) -> tuple[ModelScheduler, FakeInstance, FakeInstance]:
    engine = FakeEngine(now=now)
    general, spare = engine.create_instance("i0", Device()), engine.create_instance("i1", Device())
    config = BatchingConfig(
        max_batch_size=1,
        dynamic=True,
        priority_levels=2,
        default_priority=2,
        reserved_instances=reserved,
    )
    scheduler = ModelScheduler("prio", [general, spare], config, clock=FakeClock())
    await scheduler.start()
    return scheduler, general, spare


async def test_a_reserved_instance_runs_high_priority_while_low_priority_holds_the_rest() -> None:
    scheduler, general, reserved = await two_instances(reserved=1)
    general.gate = asyncio.Event()  # the low-priority batch it runs does not finish yet
    low = [ask(scheduler, 10.0 + i, priority=2) for i in range(3)]
    await settle()
    high = await asyncio.wait_for(ask(scheduler, 30.0, priority=1), 5)
    np.testing.assert_array_equal(high.outputs["y"], [[60.0, 60.0]])
    assert reserved.batches == [1]  # the high-priority request, nothing else
    assert not any(t.done() for t in low)  # low priority never ran on the reserved instance
    general.gate.set()
    await asyncio.gather(*low)
    assert general.batches == [1, 1, 1] and reserved.batches == [1]
    await scheduler.stop()


@pytest.mark.parametrize("now", [False, True], ids=["queued", "direct"])
async def test_an_idle_reserved_instance_serves_high_priority_before_an_idle_unreserved_one(
    now: bool,
) -> None:
    """Both instances idle: the high-priority request runs on the reserved one (which the
    server runs at the loop's priority, the other in the idle class), through the queue and
    through the direct path alike; low priority still runs on the unreserved one."""
    scheduler, general, reserved = await two_instances(reserved=1, now=now)
    for i in range(3):
        await asyncio.wait_for(ask(scheduler, 30.0 + i, priority=1), 5)
    assert reserved.batches == [1, 1, 1] and general.batches == []
    await asyncio.wait_for(ask(scheduler, 40.0, priority=2), 5)
    assert general.batches == [1]
    await scheduler.stop()


async def test_high_priority_goes_to_an_unreserved_instance_while_the_reserved_one_is_busy() -> (
    None
):
    scheduler, general, reserved = await two_instances(reserved=1)
    reserved.gate = asyncio.Event()
    first = ask(scheduler, 30.0, priority=1)
    await settle()
    assert not first.done() and general.batches == []  # it holds the reserved instance
    second = await asyncio.wait_for(ask(scheduler, 31.0, priority=1), 5)
    np.testing.assert_array_equal(second.outputs["y"], [[62.0, 62.0]])
    assert general.batches == [1] and not first.done()
    reserved.gate.set()
    await first
    assert reserved.batches == [1]
    await scheduler.stop()


async def test_high_priority_left_behind_by_the_reserved_instance_goes_to_an_idle_one() -> None:
    """Two arrive at once: the reserved instance takes one, the other does not wait for it."""
    scheduler, general, reserved = await two_instances(reserved=1)
    reserved.gate = asyncio.Event()
    first, second = ask(scheduler, 30.0, priority=1), ask(scheduler, 31.0, priority=1)
    done, _ = await asyncio.wait([first, second], timeout=5, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1 and general.batches == [1]
    reserved.gate.set()
    await asyncio.gather(first, second)
    assert reserved.batches == [1]
    await scheduler.stop()


async def test_without_reservation_high_priority_waits_for_the_running_batches() -> None:
    scheduler, first, second = await two_instances(reserved=0)
    first.gate, second.gate = asyncio.Event(), asyncio.Event()
    low = [ask(scheduler, 10.0 + i, priority=2) for i in range(3)]
    await settle()  # both instances took a low-priority batch
    high = ask(scheduler, 30.0, priority=1)
    await settle()
    assert not high.done()
    first.gate.set()
    second.gate.set()
    await asyncio.gather(high, *low)
    await scheduler.stop()


async def test_reservation_needs_levels_and_an_instance_left_for_every_level() -> None:
    with pytest.raises(ValueError, match=r"reserved_instances \(1\) needs priority_levels >= 2"):
        BatchingConfig(max_batch_size=1, dynamic=True, reserved_instances=1)
    engine = FakeEngine()
    config = BatchingConfig(max_batch_size=1, dynamic=True, priority_levels=2, reserved_instances=1)
    with pytest.raises(ValueError, match="must leave at least one of the profile's 1 instance"):
        ModelScheduler("prio", [engine.create_instance("i0", Device())], config)
