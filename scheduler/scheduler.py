"""One model version's scheduler: a batcher, a pool of instances, and the pump between them.

    submit() ──► Batcher (queue + batch formation) ──► pump ──► one task per batch ──► Instance
                                                        ▲                                │
                                                        └──── instance back to the pool ◄┘

The pump takes a free instance, then the next batch, and starts a task to run it; it never
awaits engine work itself. Every request's future is completed exactly once on every path:
result, engine error, deadline, cancellation or shutdown (see docs in ../shared/docs/style.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable, Sequence

import numpy as np

from common.errors import DeadlineExceeded, EngineError, FerryError, ShuttingDown
from engines.base import Instance
from scheduler.batch import Batch
from scheduler.batcher import Batcher
from scheduler.clock import Clock, monotonic_ns
from scheduler.config import BatchingConfig
from scheduler.request import (
    InferenceRequest,
    InferenceResult,
    set_exception_if_pending,
    set_result_if_pending,
)
from scheduler.stats import ModelStats

log = logging.getLogger("ferry.scheduler")


class ModelScheduler:
    """Runs one model version's requests in dynamic batches on its instances."""

    def __init__(
        self,
        name: str,
        instances: Sequence[Instance],
        config: BatchingConfig,
        *,
        stats: ModelStats | None = None,
        clock: Clock = monotonic_ns,
    ) -> None:
        if not instances:
            raise ValueError(f"{name}: a scheduler needs at least one instance")
        self.name = name
        self.stats = stats if stats is not None else ModelStats()
        self._instances = list(instances)
        self._batcher = Batcher(config, clock)
        self._clock = clock
        self._idle: asyncio.Queue[Instance] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pump: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    @property
    def config(self) -> BatchingConfig:
        return self._batcher.config

    @property
    def healthy(self) -> bool:
        """False once the pump died; the model then answers every request with an error."""
        return self._failure is None

    def num_enqueued(self) -> int:
        return len(self._batcher)

    async def start(self) -> None:
        for instance in self._instances:
            self._idle.put_nowait(instance)
        self._pump = asyncio.create_task(self._run(), name=f"ferry-pump-{self.name}")
        self._pump.add_done_callback(self._on_pump_done)

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        rows: int,
        batch_key: Hashable,
        *,
        deadline_ns: int | None = None,
        request_id: str = "",
    ) -> InferenceResult:
        """Queue one request and wait for its rows; the only call the server makes per request.

        If the caller is cancelled (client gone, deadline hit) the request leaves the queue at
        once, or, if it is already in a running batch, its rows are simply dropped.
        """
        future: asyncio.Future[InferenceResult] = asyncio.get_running_loop().create_future()
        request = InferenceRequest(
            inputs, rows, batch_key, future, deadline_ns=deadline_ns, id=request_id
        )
        self.submit(request)
        try:
            return await future
        except asyncio.CancelledError:
            future.cancel()
            raise

    def submit(self, request: InferenceRequest) -> None:
        if self._failure is not None:
            raise EngineError(f"model {self.name} stopped serving after an internal error")
        self._batcher.submit(request)

    async def _run(self) -> None:
        while True:
            instance = await self._idle.get()
            try:
                batch = await self._batcher.next_batch()
            except BaseException:
                self._idle.put_nowait(instance)
                raise
            task = asyncio.create_task(self._execute(instance, batch))
            self._tasks.add(task)
            task.add_done_callback(self._on_batch_done)

    async def _execute(self, instance: Instance, batch: Batch) -> None:
        try:
            now = self._clock()
            live: list[InferenceRequest] = []
            for request in batch.requests:
                if request.future.done():
                    continue
                if request.expired(now):
                    set_exception_if_pending(
                        request.future,
                        DeadlineExceeded("the request's deadline passed while it was queued"),
                    )
                    continue
                live.append(request)
            if not live:
                return
            batch = Batch(live)
            for request in live:
                self.stats.record_queue(now - request.enqueued_ns)
            await self._compute(instance, batch, now)
        finally:
            self._idle.put_nowait(instance)

    async def _compute(self, instance: Instance, batch: Batch, start_ns: int) -> None:
        try:
            result = await instance.run(batch.parts())
            answers = batch.scatter(result.outputs, self._batcher.config.max_batch_size > 0)
        except asyncio.CancelledError:
            for request in batch.requests:
                set_exception_if_pending(
                    request.future, ShuttingDown("the server is shutting down")
                )
            raise
        except FerryError as exc:
            for request in batch.requests:
                set_exception_if_pending(request.future, exc)
            return
        except Exception as exc:
            log.exception("model %s: instance %s failed a batch", self.name, instance.name)
            error = EngineError(f"model {self.name} failed to run the batch: {type(exc).__name__}")
            for request in batch.requests:
                set_exception_if_pending(request.future, error)
            return
        rows = batch.rows
        self.stats.record_execution(
            rows, len(batch.requests), result.timings, int(time.time() * 1000)
        )
        for request, outputs in zip(batch.requests, answers, strict=True):
            set_result_if_pending(
                request.future,
                InferenceResult(outputs, start_ns - request.enqueued_ns, result.timings, rows),
            )

    def _on_batch_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            log.debug("model %s: batch task cancelled", self.name)
        elif (exc := task.exception()) is not None:
            log.error("model %s: batch task failed", self.name, exc_info=exc)

    def _on_pump_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None or isinstance(exc, ShuttingDown):
            return
        self._failure = exc
        log.error("model %s: scheduler pump died; failing every waiter", self.name, exc_info=exc)
        self._batcher.close(
            EngineError(f"model {self.name} stopped serving after an internal error")
        )

    async def stop(self) -> None:
        """Refuse new work, fail what waits, cancel running batches, close the instances."""
        self._batcher.close(ShuttingDown("the server is shutting down"))
        tasks = [t for t in (self._pump, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for instance in self._instances:
            await instance.close()

    async def drain(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for queued and running work to finish (graceful shutdown)."""
        deadline = time.monotonic() + timeout_s
        # Shutdown only: a short poll is simpler than wiring an event through every path.
        while (len(self._batcher) or self._tasks) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
