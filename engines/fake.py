"""An in-memory engine for tests of the scheduler: no model file, no threads.

`FakeInstance.run` computes `output = input * 2 + instance_index` style answers from the
gathered batch, so a test can tell which rows went where, and it can be held on an
`asyncio.Event` or made to fail, to drive the batcher through cancellation and errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np

from common.datatypes import DATATYPES
from common.errors import EngineError
from engines.base import Device, ExecutionResult, Parts, TensorSpec, Timings
from engines.staging import gather

FP32 = DATATYPES["FP32"]


class FakeInstance:
    """Doubles input `x` into output `y`; records every batch it ran."""

    def __init__(self, name: str, engine: FakeEngine) -> None:
        self._name = name
        self._engine = engine
        self.batches: list[int] = []

    @property
    def name(self) -> str:
        return self._name

    async def run(self, parts: Parts) -> ExecutionResult:
        self._engine.running += 1
        try:
            if self._engine.gate is not None:
                await self._engine.gate.wait()
            x = gather(parts, "x")
            self.batches.append(int(x.shape[0]))
            self._engine.batch_log.append(int(x.shape[0]))
            if self._engine.fail is not None and self._engine.fail(x):
                raise EngineError("fake engine failed on purpose")
            y = x * 2.0
            if self._engine.drop_last_row:
                y = y[:-1]
            return ExecutionResult({"y": y}, Timings(1, 2, 3))
        finally:
            self._engine.running -= 1

    async def close(self) -> None:
        return None


class FakeEngine:
    """Engine with input `x` FP32 [-1, -1] and output `y` = 2x."""

    def __init__(self) -> None:
        self.gate: asyncio.Event | None = None
        self.fail: Callable[[np.ndarray], bool] | None = None
        self.drop_last_row = False
        self.running = 0
        self.batch_log: list[int] = []
        self.instances: list[FakeInstance] = []

    @property
    def inputs(self) -> Sequence[TensorSpec]:
        return (TensorSpec("x", FP32, (-1, -1)),)

    @property
    def outputs(self) -> Sequence[TensorSpec]:
        return (TensorSpec("y", FP32, (-1, -1)),)

    def create_instance(self, name: str, device: Device) -> FakeInstance:
        instance = FakeInstance(name, self)
        self.instances.append(instance)
        return instance

    def close(self) -> None:
        return None
