"""What the scheduler's tests share: a scheduler on the in-memory FakeEngine, a fake clock, and
a way to let the event loop catch up.

Time moves only through `FakeClock` (ferry.scheduler.clock): a test advances it and every timer
due by then fires, as the real clock's timers would, then `settle()` lets the woken tasks run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from ferry.engines.base import UNBOUNDED, Device, Profile
from ferry.engines.fake import FakeEngine
from ferry.scheduler import BatchingConfig, ModelScheduler, Padding
from ferry.scheduler.clock import Clock, FakeClock
from ferry.scheduler.request import InferenceResult

MS = 1_000_000  # nanoseconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def settle(turns: int = 5) -> None:
    """Let every task that is ready run a few steps (no time passes)."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def started(
    config: BatchingConfig,
    *,
    instances: int = 1,
    profiles: Sequence[Profile] = (UNBOUNDED,),
    padding: Padding | None = None,
    clock: Clock | None = None,
    engine: FakeEngine | None = None,
    name: str = "fake",
) -> tuple[ModelScheduler, FakeEngine]:
    """A started scheduler with `instances` FakeInstances per profile, its pumps parked."""
    engine = engine or FakeEngine()
    made = [
        engine.create_instance(f"p{p.index}i{i}", Device(), p)
        for p in profiles
        for i in range(instances)
    ]
    extra = {} if clock is None else {"clock": clock}
    scheduler = ModelScheduler(name, made, config, padding=padding, **extra)  # type: ignore[arg-type]
    await scheduler.start()
    await settle()
    return scheduler, engine


def rows(n: int, value: float, width: int = 2) -> dict[str, np.ndarray]:
    """`n` rows of input x, every element `value` (requests are told apart by value)."""
    return {"x": np.full((n, width), value, dtype=np.float32)}


def ask(
    scheduler: ModelScheduler, value: float, n: int = 1, width: int = 2, **kw: object
) -> asyncio.Task[InferenceResult]:
    """Send `n` rows of `value` in a task of their own (the caller)."""
    return asyncio.create_task(
        scheduler.infer(rows(n, value, width), n, **kw)  # type: ignore[arg-type]
    )


def values(engine: FakeEngine) -> list[float]:
    """First element of each row the engine ran, in order."""
    return [v for batch in engine.value_log for v in batch]
