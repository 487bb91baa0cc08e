"""One TensorRT execution context, bound to one optimization profile for its whole life.

Per instance: one non-blocking CUDA stream, one execution context, and `in_flight` slots, each a
set of pinned host and device buffers sized once for the profile's largest batch (so addresses
never move and CUDA graphs stay valid). A batch goes:

    enqueue thread:  wait until the slot's previous batch is done → gather every request straight
                     into the slot's pinned memory → set the input shapes that changed → bind
                     the slot's addresses → host-to-device copies → execute_async_v3 (or replay
                     the CUDA graph captured for these shapes) → device-to-host copies → event
    wait thread:     wait for the event → copy the outputs out of pinned memory (one copy)
    event loop:      only awaits a future the wait thread resolves

With two slots the enqueue thread gathers and launches batch k+1 while the GPU still runs batch
k; the stream keeps their work in order. The event loop never blocks.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from common.errors import EngineError, FerryError, ModelLoadError
from engines.base import Device, ExecutionResult, Feed, Profile, TensorSpec, Timings
from engines.cuda.toolkit import CudaToolkit
from engines.staging import gather_into

if TYPE_CHECKING:
    from engines.tensorrt.engine import TensorRTEngine

Shapes = tuple[tuple[int, ...], ...]


@dataclass
class _Slot:
    """The buffers of one batch in flight, and the event that says it finished."""

    index: int
    host: dict[str, Any]  # tensor name → PinnedBuffer
    gpu: dict[str, Any]  # tensor name → DeviceBuffer
    done: threading.Event

    def close(self) -> None:
        for buffer in (*self.host.values(), *self.gpu.values()):
            buffer.close()


@dataclass(frozen=True)
class _Launched:
    """What the wait thread needs to finish a batch."""

    event: Any
    outputs: dict[str, tuple[int, ...]]
    enqueue_ns: int


class TensorRTInstance:
    def __init__(
        self,
        name: str,
        owner: TensorRTEngine,
        engine: Any,
        cuda: CudaToolkit,
        device: Device,
        profile: Profile,
    ) -> None:
        self._name = name
        self._profile = profile
        self.device = device
        self._errors = owner.errors
        self._cuda = cuda
        self._inputs: tuple[TensorSpec, ...] = tuple(owner.inputs)
        self._outputs: tuple[TensorSpec, ...] = tuple(owner.outputs)
        self._batched = profile.max_rows > 0
        options = owner.options
        self.in_flight = max(1, options.in_flight)
        self._graphs_on = options.cuda_graphs
        self._max_graphs = options.max_graphs
        self._graphs: dict[tuple[int, Shapes], Any] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._output_shapes: dict[Shapes, dict[str, tuple[int, ...]]] = {}
        self._bound = -1  # the slot whose addresses the context holds
        # Enqueueing takes CPU time (launches): its own thread, with this device current.
        self._enqueuer = ThreadPoolExecutor(
            1, f"ferry-{name}-enqueue", initializer=cuda.use_device, initargs=(device.index,)
        )
        self._waiter = ThreadPoolExecutor(
            1, f"ferry-{name}-wait", initializer=cuda.use_device, initargs=(device.index,)
        )
        self._slots: list[_Slot] = []
        self._stream: Any = None
        self._context: Any = None
        try:
            self._enqueuer.submit(self._setup, engine).result()
        except BaseException:
            self._release()
            raise
        self._free = list(self._slots)

    @property
    def name(self) -> str:
        return self._name

    @property
    def profile(self) -> Profile:
        return self._profile

    # ---- set-up (on the enqueue thread) -------------------------------------------------------

    def _setup(self, engine: Any) -> None:
        where = f"instance {self._name}"
        self._stream = self._cuda.stream(self.device.index)
        self._context = engine.create_execution_context()
        if self._context is None:
            raise ModelLoadError(
                f"{where}: TensorRT could not create an execution context: "
                f"{self._errors.take() or 'no reason given'}"
            )
        if not self._context.set_optimization_profile_async(
            self._profile.index, int(self._stream.handle)
        ):
            raise ModelLoadError(
                f"{where}: TensorRT refused optimization profile {self._profile.index}: "
                f"{self._errors.take() or 'no reason given'}"
            )
        self._stream.synchronize()
        largest = self._largest_inputs()
        for spec in self._inputs:
            self._set_shape(spec.name, largest[spec.name], where)
        sizes = {s.name: _nbytes(s, largest[s.name]) for s in self._inputs}
        for spec in self._outputs:
            shape = tuple(int(d) for d in self._context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise ModelLoadError(
                    f"{where}: output '{spec.name}' has a data-dependent shape {list(shape)}; "
                    "Ferry sizes outputs before the run"
                )
            sizes[spec.name] = _nbytes(spec, shape)
        for index in range(self.in_flight):
            done = threading.Event()
            done.set()
            slot = _Slot(index, {}, {}, done)
            self._slots.append(slot)
            for name, nbytes in sizes.items():
                slot.host[name] = self._cuda.pinned(max(nbytes, 1))
                slot.gpu[name] = self._cuda.device_buffer(max(nbytes, 1), self.device.index)

    def _largest_inputs(self) -> dict[str, tuple[int, ...]]:
        """Each input's largest shape on this profile: what the staging buffers are sized for."""
        largest = {}
        for spec in self._inputs:
            bounds = self._profile.ranges.get(spec.name)
            if bounds is None:
                raise ModelLoadError(
                    f"instance {self._name}: the profile does not bound '{spec.name}'"
                )
            largest[spec.name] = (
                (self._profile.max_rows, *bounds.max) if self._batched else tuple(bounds.max)
            )
        return largest

    def _set_shape(self, name: str, shape: tuple[int, ...], where: str) -> None:
        if self._shapes.get(name) == shape:
            return
        if not self._context.set_input_shape(name, shape):
            self._shapes.pop(name, None)
            raise EngineError(
                f"{where}: TensorRT refused shape {list(shape)} for input '{name}': "
                f"{self._errors.take() or 'no reason given'}"
            )
        self._shapes[name] = shape

    # ---- a batch -------------------------------------------------------------------------------

    async def run(self, feed: Feed) -> ExecutionResult:
        """At most `in_flight` runs overlap (the runner's promise): each takes a free slot."""
        loop = asyncio.get_running_loop()
        if not self._free:
            raise EngineError(
                f"instance {self._name}: more batches than its {self.in_flight} slots"
            )
        slot = self._free.pop()
        answer: asyncio.Future[ExecutionResult] = loop.create_future()

        def settle(result: ExecutionResult | None, error: BaseException | None) -> None:
            self._free.append(slot)
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

        def finish(launched: _Launched) -> None:
            try:
                report(self._finish(slot, launched), None)
            except BaseException as exc:
                report(None, exc)

        def enqueue() -> None:
            try:
                launched = self._enqueue(feed, slot)
            except BaseException as exc:
                self._settle_stream()
                slot.done.set()
                report(None, exc)
                return
            self._waiter.submit(finish, launched)

        self._enqueuer.submit(enqueue)
        try:
            return await answer
        except FerryError:
            raise
        except Exception as exc:  # TensorRT's and CUDA's own exception types, translated here
            raise EngineError(f"TensorRT failed to run the batch: {exc}") from exc

    def _enqueue(self, feed: Feed, slot: _Slot) -> _Launched:
        start = time.perf_counter_ns()
        slot.done.wait()  # the slot's previous batch (its copies) is over
        slot.done.clear()
        where = f"instance {self._name}"
        shapes: list[tuple[int, ...]] = []
        for spec in self._inputs:
            first = feed.parts[0][spec.name]
            padded = feed.padded.get(spec.name)
            if self._batched:
                shape = (feed.rows, *(padded[0] if padded else first.shape[1:]))
            else:
                shape = tuple(first.shape)
            gather_into(feed, spec.name, slot.host[spec.name].view(spec.datatype.numpy, shape))
            shapes.append(shape)
        key = tuple(shapes)
        for spec, shape in zip(self._inputs, shapes, strict=True):
            self._set_shape(spec.name, shape, where)
        outputs = self._output_shapes.get(key)
        if outputs is None:
            outputs = {
                s.name: tuple(int(d) for d in self._context.get_tensor_shape(s.name))
                for s in self._outputs
            }
            self._output_shapes[key] = outputs
        if self._bound != slot.index:
            for name, buffer in slot.gpu.items():
                if not self._context.set_tensor_address(name, buffer.pointer):
                    raise EngineError(f"{where}: TensorRT refused the address of '{name}'")
            self._bound = slot.index
        stream = self._stream
        for spec, shape in zip(self._inputs, shapes, strict=True):
            slot.gpu[spec.name].copy_from(slot.host[spec.name], _nbytes(spec, shape), stream)
        self._execute(slot.index, key)
        for spec in self._outputs:
            nbytes = _nbytes(spec, outputs[spec.name])
            slot.host[spec.name].copy_from(slot.gpu[spec.name], nbytes, stream)
        return _Launched(stream.record(), outputs, time.perf_counter_ns() - start)

    def _execute(self, slot: int, key: Shapes) -> None:
        """Enqueue the model: replay this shape's graph, or run it (and capture a graph once)."""
        graph = self._graphs.get((slot, key))
        if graph is not None:
            graph.launch(self._stream)
            return
        self._enqueue_model()
        if self._graphs_on and len(self._graphs) < self._max_graphs:
            # TensorRT finishes any shape-dependent set-up in a plain enqueue (the one above);
            # the capture after it records the kernels only, and runs nothing.
            self._graphs[(slot, key)] = self._cuda.capture(self._stream, self._enqueue_model)

    def _enqueue_model(self) -> None:
        if not self._context.execute_async_v3(int(self._stream.handle)):
            raise EngineError(
                f"instance {self._name}: TensorRT execute_async_v3 failed: "
                f"{self._errors.take() or 'no reason given'}"
            )

    def _settle_stream(self) -> None:
        """After a failed enqueue: let whatever did get enqueued finish before the slot's
        buffers are reused."""
        try:
            self._stream.synchronize()
        except Exception:  # the stream itself is broken: the next batch will say so
            pass

    def _finish(self, slot: _Slot, launched: _Launched) -> ExecutionResult:
        waited = time.perf_counter_ns()
        try:
            self._stream.wait(launched.event)
            copied = time.perf_counter_ns()
            outputs = {
                spec.name: np.array(
                    slot.host[spec.name].view(spec.datatype.numpy, launched.outputs[spec.name])
                )
                for spec in self._outputs
            }
        finally:
            slot.done.set()
        done = time.perf_counter_ns()
        return ExecutionResult(
            outputs, Timings(launched.enqueue_ns, copied - waited, done - copied)
        )

    # ---- shutdown ------------------------------------------------------------------------------

    @property
    def graphs(self) -> int:
        """How many CUDA graphs this instance has captured."""
        return len(self._graphs)

    async def close(self) -> None:
        await asyncio.to_thread(self._release)

    def _release(self) -> None:
        self._enqueuer.shutdown(wait=True)
        self._waiter.shutdown(wait=True)
        if self._stream is not None:
            self._stream.synchronize()
        for graph in self._graphs.values():
            graph.close()
        self._graphs.clear()
        for slot in self._slots:
            slot.close()
        self._slots.clear()
        self._context = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def _nbytes(spec: TensorSpec, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * int(spec.datatype.numpy.itemsize)
