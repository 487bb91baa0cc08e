"""Batches in flight on one CUDA stream: the part every GPU instance shares.

    enqueue thread:  wait until the slot's previous batch is over → `launch(feed, slot)`:
                     gather into the slot's pinned memory, copies in, the model, copies out,
                     all enqueued on the stream → an event recorded after them
    wait thread:     wait for the event → copy the outputs out of pinned memory (one copy)
    event loop:      awaits a future the threads resolve; it never blocks

With `depth` slots (pinned and device buffers of their own) the enqueue thread gathers and
launches batch k+1 while the GPU still runs batch k; the stream keeps their work in order. A
backend (TensorRT, ONNX Runtime CUDA) supplies only `launch`. A launch that already waited for
its model (ONNX Runtime replaying a CUDA graph synchronizes) says so by returning no event, and
the enqueue thread finishes that batch itself: one thread hand-off less.

The threads are plain threads over `queue.SimpleQueue`s rather than executors: a batch's
hand-offs are most of its CPU cost at small batches, and an executor's per-task future and
bookkeeping add to each.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ferry.common.cpus import widen_to_compute
from ferry.common.errors import EngineError, FerryError
from ferry.engines.base import ExecutionResult, Feed, TensorSpec, Timings
from ferry.engines.cuda.toolkit import CudaToolkit

T = TypeVar("T")
log = logging.getLogger("ferry.engines.cuda")


@dataclass
class Slot:
    """One batch's buffers: pinned host and device memory per tensor, and what else the
    backend keeps per batch (an I/O binding)."""

    index: int
    host: dict[str, Any] = field(default_factory=dict)  # tensor name → PinnedBuffer
    gpu: dict[str, Any] = field(default_factory=dict)  # tensor name → DeviceBuffer
    extra: Any = None
    done: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        for buffer in (*self.host.values(), *self.gpu.values()):
            buffer.close()
        self.host.clear()
        self.gpu.clear()


@dataclass(frozen=True)
class Launched:
    """What `launch` enqueued: the event after its copies out (None: the launch waited for its
    model, only the copies out are left: the enqueue thread waits for the stream and finishes
    the batch), the shapes of the outputs in the slot's pinned memory, and outputs the backend
    already has on the host."""

    event: Any
    shapes: dict[str, tuple[int, ...]]
    on_host: dict[str, np.ndarray] = field(default_factory=dict)


Launch = Callable[[Feed, Slot], Launched]


class _Worker:
    """One thread running the jobs handed to it, in order. A job reports its own outcome; the
    thread only runs it."""

    def __init__(self, name: str, initializer: Callable[[int], None], device: int) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._serve, args=(initializer, device), name=name, daemon=True
        )
        self._stopped = False
        self._thread.start()

    def _serve(self, initializer: Callable[[int], None], device: int) -> None:
        widen_to_compute()  # off the front end's CPU (common/cpus.py)
        try:
            initializer(device)
        except Exception:  # no usable device: each job then fails on its own CUDA calls
            log.exception("%s: cannot make device %d current", self._thread.name, device)
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:  # a job reports its own errors; this one is a bug: keep serving
                log.exception("%s: a job failed", self._thread.name)

    def submit(self, job: Callable[[], None]) -> None:
        if self._stopped:
            raise RuntimeError(f"{self._thread.name} is stopped")
        self._jobs.put(job)

    def call(self, function: Callable[..., T], *args: Any) -> T:
        """Run `function` on the thread and wait for its result."""
        done: Future[T] = Future()

        def job() -> None:
            try:
                done.set_result(function(*args))
            except BaseException as exc:
                done.set_exception(exc)

        self.submit(job)
        return done.result()

    def stop(self) -> None:
        """Run what was handed in so far, then end the thread."""
        if not self._stopped:
            self._stopped = True
            self._jobs.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join()


class StreamPipeline:
    def __init__(
        self,
        name: str,
        device: int,
        cuda: CudaToolkit,
        depth: int,
        outputs: Sequence[TensorSpec],
    ) -> None:
        self.name = name
        self.depth = max(1, depth)
        self._cuda = cuda
        self._outputs = tuple(outputs)
        # Enqueueing takes CPU time (kernel launches): a thread of its own, device current.
        self._enqueuer = _Worker(f"ferry-{name}-enqueue", cuda.use_device, device)
        self._waiter = _Worker(f"ferry-{name}-wait", cuda.use_device, device)
        self.stream: Any = None
        self.slots = [Slot(i) for i in range(self.depth)]
        for slot in self.slots:
            slot.done.set()
        self._free: asyncio.Queue[Slot] = asyncio.Queue()
        for slot in self.slots:
            self._free.put_nowait(slot)
        self._launch: Launch | None = None
        try:
            self.stream = self.call(cuda.stream, device)
        except BaseException:
            self.close()
            raise

    def call(self, function: Callable[..., T], *args: Any) -> T:
        """Run `function` on the enqueue thread and wait for it (set-up: contexts, sessions and
        buffers belong to the thread that has the device current)."""
        return self._enqueuer.call(function, *args)

    def start(self, launch: Launch) -> None:
        self._launch = launch

    @property
    def free_slots(self) -> int:
        return self._free.qsize()

    async def run(self, feed: Feed) -> ExecutionResult:
        """Run one batch in a free slot. The runner starts at most `depth` at once; a slot whose
        run was cancelled comes back only when its threads are done with it, and a run that
        finds none free waits for one."""
        loop = asyncio.get_running_loop()
        slot = await self._free.get()
        answer: asyncio.Future[ExecutionResult] = loop.create_future()

        def settle(result: ExecutionResult | None, error: BaseException | None) -> None:
            self._free.put_nowait(slot)
            if answer.done():
                return
            if error is not None:
                answer.set_exception(error)
            else:
                answer.set_result(result)  # type: ignore[arg-type]

        def report(result: ExecutionResult | None, error: BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(settle, result, error)
            except RuntimeError:  # the loop closed (shutdown): nobody waits for the answer
                pass

        def finish(launched: Launched, enqueue_ns: int) -> None:
            try:
                report(self._finish(slot, launched, enqueue_ns), None)
            except BaseException as exc:
                report(None, exc)

        def abandon(exc: BaseException) -> None:
            """The batch cannot finish: let its enqueued work end, free the slot, say why."""
            self._settle_stream()
            slot.done.set()
            report(None, exc)

        def enqueue() -> None:
            start = time.perf_counter_ns()
            try:
                slot.done.wait()  # the slot's previous batch (its copies) is over
                slot.done.clear()
                assert self._launch is not None, "start() was not called"
                launched = self._launch(feed, slot)
            except BaseException as exc:
                abandon(exc)
                return
            enqueue_ns = time.perf_counter_ns() - start
            if self.depth == 1 or launched.event is None:  # one thread hand-off less
                finish(launched, enqueue_ns)
                return
            try:
                self._waiter.submit(lambda: finish(launched, enqueue_ns))
            except RuntimeError as exc:  # the wait thread was stopped (shutdown)
                abandon(exc)

        self._enqueuer.submit(enqueue)
        try:
            return await answer
        except FerryError:
            raise
        except Exception as exc:  # the backend's and CUDA's own exception types
            raise EngineError(f"instance {self.name} failed to run the batch: {exc}") from exc

    def _settle_stream(self) -> None:
        """After a failed launch: let whatever did get enqueued finish before the slot's buffers
        are reused."""
        try:
            self.stream.synchronize()
        except Exception:  # the stream itself is broken: the next batch will say so
            pass

    def _finish(self, slot: Slot, launched: Launched, enqueue_ns: int) -> ExecutionResult:
        waited = time.perf_counter_ns()
        try:
            if launched.event is None:
                self.stream.synchronize()
            else:
                self.stream.wait(launched.event)
            copied = time.perf_counter_ns()
            outputs = dict(launched.on_host)
            for spec in self._outputs:
                if spec.name in launched.shapes:
                    view = slot.host[spec.name].view(
                        spec.datatype.numpy, launched.shapes[spec.name]
                    )
                    outputs[spec.name] = np.array(view)
        finally:
            slot.done.set()
        done = time.perf_counter_ns()
        return ExecutionResult(outputs, Timings(enqueue_ns, copied - waited, done - copied))

    def stop(self) -> None:
        """Finish what is in flight and stop the threads; buffers stay until close()."""
        self._enqueuer.stop()
        self._waiter.stop()
        if self.stream is not None:
            self.stream.synchronize()

    def close(self) -> None:
        """stop(), then free every slot's buffers and the stream."""
        self.stop()
        for slot in self.slots:
            slot.close()
        if self.stream is not None:
            self.stream.close()
            self.stream = None
