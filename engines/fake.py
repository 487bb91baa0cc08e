"""An in-memory engine for tests of the scheduler: no model file, no threads.

`FakeInstance.run` computes `y = 2x` from the gathered (and, when asked, padded) batch, so a
test can tell which rows went where; it logs every batch's size, shape and profile, and it can
be held on an
`asyncio.Event` or made to fail, to drive the batcher through cancellation and errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np

from ferry.common.datatypes import DATATYPES
from ferry.common.digests import sha256_of
from ferry.common.errors import EngineError
from ferry.engines.base import (
    UNBOUNDED,
    Device,
    ExecutionResult,
    Feed,
    Profile,
    TensorSpec,
    Timings,
)
from ferry.engines.loading import Artifact, GpuLookup, Loaded, Planner, VersionFiles
from ferry.engines.staging import gather

FP32 = DATATYPES["FP32"]
NOW_ROWS = 2


class FakeInstance:
    """Doubles input `x` into output `y`; records every batch it ran."""

    def __init__(self, name: str, engine: FakeEngine, profile: Profile) -> None:
        self._name = name
        self._engine = engine
        self._profile = profile
        self.batches: list[int] = []
        self.values: list[float] = []  # first element of every row it ran
        self.gate: asyncio.Event | None = None  # holds this instance only (the engine's: all)

    @property
    def name(self) -> str:
        return self._name

    @property
    def profile(self) -> Profile:
        return self._profile

    device = Device()
    in_flight = 1

    @property
    def inline(self) -> bool:
        return self._engine.now

    def run_now(self, feed: Feed) -> ExecutionResult | None:
        """Offered only by an engine made with `now=True`, for batches of at most `NOW_ROWS`
        rows and while this instance's own gate is not set: runs the batch synchronously on the
        caller's thread, as the CPU backend runs tiny batches inline. The engine's gate holds
        only `run`, so tests can keep large batches running while small ones go straight
        through."""
        if not self._engine.now or feed.rows > NOW_ROWS or self.gate is not None:
            return None
        self._engine.now_tasks.append(asyncio.current_task())
        return self._compute(feed)

    async def run(self, feed: Feed) -> ExecutionResult:
        self._engine.running += 1
        try:
            if self._engine.gate is not None:
                await self._engine.gate.wait()
            if self.gate is not None:
                await self.gate.wait()
            return self._compute(feed)
        finally:
            self._engine.running -= 1

    async def warm(self, feed: Feed) -> None:
        """A warm-up batch is recorded and computed like any other (its failure fails the load)."""
        await self.run(feed)

    def _compute(self, feed: Feed) -> ExecutionResult:
        x = gather(feed, "x")
        self._engine.shapes_log.append((self._profile.index, x.shape))
        self._engine.value_log.append([float(v) for v in x.reshape(len(x), -1)[:, 0]])
        self.batches.append(int(x.shape[0]))
        self.values += self._engine.value_log[-1]
        self._engine.batch_log.append(int(x.shape[0]))
        if self._engine.fail is not None and self._engine.fail(x):
            raise EngineError("fake engine failed on purpose")
        y = x * 2.0
        if self._engine.drop_last_row:
            y = y[:-1]
        return ExecutionResult({"y": y}, Timings(1, 2, 3))

    async def close(self) -> None:
        return None


class FakeEngine:
    """Engine with input `x` FP32 [-1, -1] and output `y` = 2x."""

    def __init__(self, now: bool = False) -> None:
        """now: instances offer `run_now` (the scheduler may then answer an idle model's
        request in the caller's task); `now_tasks` records the task of every such run."""
        self.now = now
        self.now_tasks: list[asyncio.Task[object] | None] = []
        self.gate: asyncio.Event | None = None
        self.fail: Callable[[np.ndarray], bool] | None = None
        self.drop_last_row = False
        self.running = 0
        self.batch_log: list[int] = []
        self.shapes_log: list[tuple[int, tuple[int, ...]]] = []  # (profile index, batch shape)
        self.value_log: list[list[float]] = []  # first element of every row, batch by batch
        self.instances: list[FakeInstance] = []

    @property
    def inputs(self) -> Sequence[TensorSpec]:
        return (TensorSpec("x", FP32, (-1, -1)),)

    @property
    def outputs(self) -> Sequence[TensorSpec]:
        return (TensorSpec("y", FP32, (-1, -1)),)

    @property
    def profiles(self) -> Sequence[Profile]:
        return ()

    def create_instance(
        self, name: str, device: Device, profile: Profile = UNBOUNDED
    ) -> FakeInstance:
        instance = FakeInstance(name, self, profile)
        self.instances.append(instance)
        return instance

    def close(self) -> None:
        return None


class FakeLoader:
    """Serves a version folder holding `model.fake` (any bytes) on one FakeEngine, as a backend
    would: for tests of the repository and of the loader registry without a model file."""

    platform = "ferry_fake"
    backend = "fake"
    filename = "model.fake"
    utf8_bytes = False

    def __init__(self, engine: FakeEngine | None = None) -> None:
        self.engine = engine or FakeEngine()

    async def load(self, files: VersionFiles, plan: Planner, gpus: GpuLookup) -> Loaded:
        loaded = Loaded([self.engine], [], sha256_of(files.path))
        try:
            planned, _ = await plan(Artifact(self.engine.inputs, self.engine.outputs))
        except BaseException:
            await loaded.close()
            raise
        loaded.instances += [
            self.engine.create_instance(f"{files.model}_{files.version}_{i}", p.device, p.profile)
            for i, p in enumerate(planned)
        ]
        return loaded
