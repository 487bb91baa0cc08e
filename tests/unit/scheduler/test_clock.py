"""The fake clock keeps the real one's promises: timers fire in time order, each seeing its own
time, a cancelled timer never fires, and time never goes back."""

from __future__ import annotations

import asyncio

import pytest

from ferry.scheduler.clock import MONOTONIC, FakeClock


def test_timers_fire_in_order_each_at_its_own_time() -> None:
    clock = FakeClock(100)
    seen: list[tuple[str, int]] = []
    clock.call_at(300, lambda: seen.append(("late", clock.now())))
    clock.call_at(200, lambda: seen.append(("early", clock.now())))
    cancelled = clock.call_at(250, lambda: seen.append(("cancelled", clock.now())))
    cancelled.cancel()
    clock.call_at(50, lambda: seen.append(("past", clock.now())))  # already due: next move
    assert clock.pending == 3
    clock.advance(150)
    assert seen == [("past", 100), ("early", 200)] and clock.now() == 250
    clock.advance_to(1000)
    assert seen[-1] == ("late", 300) and clock.now() == 1000 and clock.pending == 0
    with pytest.raises(ValueError, match="never goes back"):
        clock.advance_to(999)


@pytest.mark.asyncio
async def test_the_real_clock_calls_back_on_the_loop() -> None:
    fired = asyncio.Event()
    MONOTONIC.call_at(MONOTONIC.now() + 1_000_000, fired.set)
    await asyncio.wait_for(fired.wait(), timeout=5)
    cancelled = asyncio.Event()
    MONOTONIC.call_at(MONOTONIC.now(), cancelled.set).cancel()
    await asyncio.sleep(0.01)
    assert not cancelled.is_set()
