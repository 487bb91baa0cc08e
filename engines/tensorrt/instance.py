"""One TensorRT execution context, bound to one optimization profile for its whole life.

Per instance: one execution context and a stream pipeline (engines/cuda/pipeline.py) whose
`in_flight` slots hold pinned host and device buffers sized once, for the profile's largest
batch, so addresses never move and CUDA graphs stay valid. A batch's launch, on the pipeline's
enqueue thread:

    gather every request straight into the slot's pinned memory → set the input shapes that
    changed → bind the slot's addresses (when the slot changed) → host-to-device copies →
    execute_async_v3, or replay the CUDA graph captured for these shapes → device-to-host copies

The context's work is ordered on one stream, so the next batch's shapes and addresses may be set
as soon as execute_async_v3 has returned for this one.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

from ferry.common.errors import EngineError, ModelLoadError
from ferry.engines.base import Device, ExecutionResult, Feed, OffLoop, Profile, TensorSpec
from ferry.engines.cuda.pipeline import Launched, Slot, StreamPipeline
from ferry.engines.cuda.toolkit import CudaToolkit
from ferry.engines.staging import gather_into
from ferry.engines.tensorrt.options import TensorRTOptions
from ferry.engines.tensorrt.runtime import ErrorLog

Shapes = tuple[tuple[int, ...], ...]


class TensorRTInstance(OffLoop):
    def __init__(
        self,
        name: str,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        options: TensorRTOptions,
        errors: ErrorLog,
        engine: Any,
        cuda: CudaToolkit,
        device: Device,
        profile: Profile,
    ) -> None:
        self._name = name
        self._profile = profile
        self.device = device
        self._errors = errors
        self._cuda = cuda
        self._inputs: tuple[TensorSpec, ...] = tuple(inputs)
        self._outputs: tuple[TensorSpec, ...] = tuple(outputs)
        self._batched = profile.max_rows > 0
        self.in_flight = max(1, options.in_flight)
        self._graphs_on = options.cuda_graphs
        self._max_graphs = options.max_graphs
        self._graphs: dict[tuple[int, Shapes], Any] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._output_shapes: dict[Shapes, dict[str, tuple[int, ...]]] = {}
        self._bound = -1  # the slot whose addresses the context holds
        self._context: Any = None
        self._pipeline = StreamPipeline(name, device.index, cuda, self.in_flight, self._outputs)
        try:
            self._pipeline.call(self._setup, engine)
        except BaseException:
            self._release()
            raise
        self._pipeline.start(self._launch)

    @property
    def name(self) -> str:
        return self._name

    @property
    def profile(self) -> Profile:
        return self._profile

    @property
    def graphs(self) -> int:
        """How many CUDA graphs this instance has captured."""
        return len(self._graphs)

    @property
    def context(self) -> Any:
        """The TensorRT execution context (tests read its active profile)."""
        return self._context

    # ---- set-up (on the enqueue thread) -------------------------------------------------------

    def _setup(self, engine: Any) -> None:
        where = f"instance {self._name}"
        stream = self._pipeline.stream
        self._context = engine.create_execution_context()
        if self._context is None:
            raise ModelLoadError(
                f"{where}: TensorRT could not create an execution context: "
                f"{self._errors.take() or 'no reason given'}"
            )
        if not self._context.set_optimization_profile_async(
            self._profile.index, int(stream.handle)
        ):
            raise ModelLoadError(
                f"{where}: TensorRT refused optimization profile {self._profile.index}: "
                f"{self._errors.take() or 'no reason given'}"
            )
        stream.synchronize()
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
        for slot in self._pipeline.slots:
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

    # ---- a batch (launched on the enqueue thread) -----------------------------------------------

    async def run(self, feed: Feed) -> ExecutionResult:
        return await self._pipeline.run(feed)

    def _launch(self, feed: Feed, slot: Slot) -> Launched:
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
        stream = self._pipeline.stream
        for spec, shape in zip(self._inputs, shapes, strict=True):
            slot.gpu[spec.name].copy_from(slot.host[spec.name], _nbytes(spec, shape), stream)
        self._execute(slot.index, key)
        for spec in self._outputs:
            nbytes = _nbytes(spec, outputs[spec.name])
            slot.host[spec.name].copy_from(slot.gpu[spec.name], nbytes, stream)
        return Launched(stream.record(), outputs)

    def _execute(self, slot: int, key: Shapes) -> None:
        """Enqueue the model: replay this shape's graph, or run it (and capture a graph once)."""
        graph = self._graphs.get((slot, key))
        if graph is not None:
            graph.launch(self._pipeline.stream)
            return
        self._enqueue_model()
        if self._graphs_on and len(self._graphs) < self._max_graphs:
            # TensorRT finishes any shape-dependent set-up in a plain enqueue (the one above);
            # the capture after it records the kernels only, and runs nothing.
            graph = self._cuda.capture(self._pipeline.stream, self._enqueue_model)
            self._graphs[(slot, key)] = graph

    def _enqueue_model(self) -> None:
        if not self._context.execute_async_v3(int(self._pipeline.stream.handle)):
            raise EngineError(
                f"instance {self._name}: TensorRT execute_async_v3 failed: "
                f"{self._errors.take() or 'no reason given'}"
            )

    # ---- shutdown ------------------------------------------------------------------------------

    async def close(self) -> None:
        await asyncio.to_thread(self._release)

    def _release(self) -> None:
        self._pipeline.stop()
        for graph in self._graphs.values():
            graph.close()
        self._graphs.clear()
        self._context = None
        self._pipeline.close()


def _nbytes(spec: TensorSpec, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * int(spec.datatype.numpy.itemsize)
