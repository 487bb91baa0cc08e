"""ONNX Runtime on the GPU: the same `model.onnx`, run by the CUDA execution provider on Ferry's
own CUDA stream and buffers through I/O binding.

Each instance owns a stream pipeline (engines/cuda/pipeline.py): a non-blocking stream, one
session bound to it (`user_compute_stream`), and `in_flight` slots, each with an I/O binding and
pinned host and device buffers for every input and output, grown to the largest batch seen.
A batch's launch, on the pipeline's enqueue thread:

    gather each request straight into pinned memory (one copy per request)
    → host-to-device copies on the stream → the session enqueues its kernels on the stream
    → device-to-host copies of the outputs

and the pipeline's wait thread copies the outputs out of pinned memory once the stream got
there, while the enqueue thread already launches the next batch in another slot. The event
loop only awaits the result, so it never blocks.

With `cuda_graphs` (config `optimization { cuda { graphs: true } }`) ONNX Runtime captures the
model once per batch size as a CUDA graph (its `enable_cuda_graph` provider option, one
`gpu_graph_id` per size and slot) and a batch replays the graph of the smallest size that holds
it, its extra rows zeroed: one launch instead of one per operator, which at small batches is
most of the time. Sizes are captured from the smallest up, each timed against a plain run, up
to the first whose replay saves too little (GRAPH_GAIN); larger batches run plainly. Graphs
replay fixed addresses and shapes, so every buffer is allocated once at the largest size, all
graphs are captured when the instance is made (one instance of the process at a time: ONNX
Runtime captures in CUDA's global mode, in which other threads' CUDA calls could break it), and
models whose non-batch dims vary are refused. ONNX Runtime synchronizes the stream after each
replay, so the enqueue thread waits for the model there and finishes the batch itself (the
copies out are all that is left).

Needs the `onnxruntime-gpu` build and cuda-python; without them the engine refuses to load with
a message saying so, and the CPU backend serves. An output whose dims (batch aside) are not fixed
cannot be sized before the run: ONNX Runtime allocates it and copies it to the host itself.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ferry.common.errors import ModelLoadError
from ferry.engines.base import Device, ExecutionResult, Feed, OffLoop, Profile, TensorSpec
from ferry.engines.cuda.pipeline import Launched, Slot, StreamPipeline
from ferry.engines.onnxruntime import OnnxRuntimeOptions, OnnxSignature, _spec
from ferry.engines.staging import gather_into

CUDA = "CUDAExecutionProvider"

_CAPTURING = threading.Lock()
"""Held while an instance captures its graphs: one capture at a time in the process."""

WARM_RUNS = 4
"""Runs per graph at capture: ONNX Runtime runs a size plainly before it captures it (its
allocations are made then), and replays once right after capturing."""

GRAPH_GAIN = 0.8
"""A size keeps its graph only if a replay takes at most this share of a plain run (both timed
at capture, to completion). Small batches are launch-bound and gain several times; large ones
are GPU-bound and gain little, while a replay, which ONNX Runtime synchronizes, keeps the
enqueue thread from gathering the next batch as the GPU runs this one: they run plainly."""


def graph_sizes(max_rows: int) -> tuple[int, ...]:
    """The batch sizes that get a graph: every power of two below `max_rows`, and `max_rows`.

    A batch runs as the smallest size that holds it, so less than half of it is padding; a
    model with max_batch_size 1024 needs 11 graphs per slot.
    """
    if max_rows < 1:
        raise ValueError(f"CUDA graphs need max rows >= 1, got {max_rows}")
    sizes = []
    size = 1
    while size < max_rows:
        sizes.append(size)
        size *= 2
    sizes.append(max_rows)
    return tuple(sizes)


def graph_size(sizes: Sequence[int], rows: int) -> int:
    """The smallest of `sizes` (ascending) that holds `rows`."""
    at = bisect.bisect_left(sizes, rows)
    if at == len(sizes):
        raise ValueError(f"a batch of {rows} rows is larger than every graph ({sizes[-1]})")
    return sizes[at]


class OnnxRuntimeCudaEngine(OnnxSignature):
    """max_batch_size: the model's (config); with CUDA graphs it sets the largest graph."""

    def __init__(
        self, path: Path, options: OnnxRuntimeOptions | None = None, max_batch_size: int = 0
    ) -> None:
        import onnxruntime as ort

        options = options or OnnxRuntimeOptions()
        if CUDA not in ort.get_available_providers():
            raise ModelLoadError(
                f"{path}: this onnxruntime build has no {CUDA} (install onnxruntime-gpu)"
            )
        self._ort = ort
        self._path = path
        self._options = options
        described = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self._inputs = tuple(_spec(a) for a in described.get_inputs())
        self._outputs = tuple(_spec(a) for a in described.get_outputs())
        for spec in (*self._inputs, *self._outputs):
            if spec.datatype.name in ("BYTES", "BF16"):
                raise ModelLoadError(
                    f"{path}: tensor '{spec.name}' is {spec.datatype.name}, which the CUDA "
                    "backend does not bind"
                )
        self._max_batch_size = max_batch_size
        if options.cuda_graphs:
            check_graphable(path, max_batch_size, (*self._inputs, *self._outputs))

    def create_instance(
        self, name: str, device: Device, profile: Profile
    ) -> OnnxRuntimeCudaInstance:
        if device.kind != "gpu":
            raise ModelLoadError(f"instance {name}: the ONNX Runtime CUDA backend needs a GPU")
        sizes: tuple[int, ...] = ()
        if self._options.cuda_graphs:
            sizes = graph_sizes(profile.batch_rows(self._max_batch_size))
        return OnnxRuntimeCudaInstance(
            name,
            self._ort,
            self._path,
            self._options,
            self._inputs,
            self._outputs,
            device,
            profile,
            sizes,
        )

    def close(self) -> None:
        return None


def check_graphable(path: Path, max_batch_size: int, specs: Sequence[TensorSpec]) -> None:
    """Graphs replay fixed shapes: refuse, at load, a model whose batches cannot have them."""
    if max_batch_size < 1:
        raise ModelLoadError(
            f"{path}: optimization.cuda.graphs needs a batched model (max_batch_size > 0)"
        )
    for spec in specs:
        if any(d < 0 for d in spec.dims[1:]):
            raise ModelLoadError(
                f"{path}: optimization.cuda.graphs needs fixed non-batch dims, and tensor "
                f"'{spec.name}' has dims {list(spec.dims[1:])}"
            )


def _nbytes(spec: TensorSpec, rows: int) -> int:
    return rows * math.prod(spec.dims[1:]) * int(spec.datatype.numpy.itemsize)


def _ensure(slot: Slot, name: str, nbytes: int, device: int) -> None:
    """Grow a slot's pinned and device buffers of one tensor to hold `nbytes` (doubling)."""
    from ferry.engines.cuda.stream import DeviceBuffer, PinnedBuffer

    held = slot.host.get(name)
    if held is not None and held.nbytes >= nbytes:
        return
    size = max(nbytes, 2 * held.nbytes if held is not None else 0, 1)
    if held is not None:
        held.close()
        slot.gpu[name].close()
    slot.host[name], slot.gpu[name] = PinnedBuffer(size), DeviceBuffer(size, device)


class _Binding:
    """One slot's I/O binding and what each of its names is bound to now."""

    def __init__(self, binding: Any) -> None:
        self.binding = binding
        self._bound: dict[str, tuple[tuple[int, ...], int]] = {}

    def input(self, name: str, device: int, dtype: Any, shape: tuple[int, ...], at: int) -> None:
        if self._bound.get(name) != (shape, at):
            self.binding.bind_input(name, "cuda", device, dtype, shape, at)
            self._bound[name] = (shape, at)

    def output(self, name: str, device: int, dtype: Any, shape: tuple[int, ...], at: int) -> None:
        if self._bound.get(name) != (shape, at):
            self.binding.bind_output(name, "cuda", device, dtype, shape, at)
            self._bound[name] = (shape, at)

    def output_to_host(self, name: str) -> None:
        # Bound anew every batch: ONNX Runtime keeps the value it allocated in the last run
        # and would try to reuse it for this one, whose shape may differ.
        self.binding.bind_output(name, "cpu")


class OnnxRuntimeCudaInstance(OffLoop):
    """One stream, one session on it, and `in_flight` slots of staging buffers.

    sizes: the batch sizes offered CUDA graphs (graph_sizes()); () = no graphs. After capture
    only those that paid remain, in `_graph_sizes`; `graph_timings` keeps what was measured.
    """

    def __init__(
        self,
        name: str,
        ort: Any,
        path: Path,
        options: OnnxRuntimeOptions,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        device: Device,
        profile: Profile,
        sizes: tuple[int, ...] = (),
    ) -> None:
        from ferry.engines.cuda import toolkit

        self._name = name
        self._profile = profile
        self.device = device
        self._inputs = inputs
        self._outputs = outputs
        self.in_flight = max(1, options.in_flight)
        self._options = options
        self._host_outputs = [s.name for s in outputs if any(d < 0 for d in s.dims[1:])]
        self._ort = ort
        self._graph_sizes = sizes
        self._graph_runs: dict[tuple[int, int], Any] = {}  # (slot, rows) → its graph's options
        self.graph_timings: dict[int, tuple[float, float]] = {}  # rows → (replay, plain) seconds
        # With graphs on, a run that names no graph would capture one: plain runs say -1.
        self._run_options = self._options_for(-1 if sizes else None)
        self._pipeline = StreamPipeline(name, device.index, toolkit.real(), self.in_flight, outputs)
        try:
            self._session = self._pipeline.call(self._open, ort, path)
            if sizes:
                with _CAPTURING:
                    self._pipeline.call(self._capture)
        except BaseException:
            self._pipeline.close()
            raise
        self._pipeline.start(self._launch_graph if sizes else self._launch)

    def _options_for(self, graph: int | None) -> Any:
        options = self._ort.RunOptions()
        options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        if graph is not None:
            options.add_run_config_entry("gpu_graph_id", str(graph))
        return options

    def _open(self, ort: Any, path: Path) -> Any:
        session_options = ort.SessionOptions()
        session_options.log_severity_level = 3
        # The operators a GPU model leaves on the CPU run on these threads; without a count,
        # every session of every worker process would start one thread per core.
        session_options.intra_op_num_threads = self._options.intra_op_threads
        session_options.inter_op_num_threads = self._options.inter_op_threads
        provider = {
            "device_id": str(self.device.index),
            "has_user_compute_stream": "1",
            "user_compute_stream": str(int(self._pipeline.stream.handle)),
        }
        if self._graph_sizes:
            provider["enable_cuda_graph"] = "1"
        try:
            session = ort.InferenceSession(str(path), session_options, providers=[(CUDA, provider)])
        except Exception as exc:  # ONNX Runtime's own exception types
            raise ModelLoadError(f"{path}: onnxruntime CUDA cannot load it: {exc}") from exc
        for slot in self._pipeline.slots:
            slot.extra = _Binding(session.io_binding())
        return session

    def _capture(self) -> None:
        """Capture graphs per slot and size, on the enqueue thread (ONNX Runtime keeps a
        thread's graphs for that thread), from the smallest size up to the first whose replay
        does not pay (GRAPH_GAIN); larger batches run plainly. Buffers are made at the largest
        size first, so the addresses the graphs hold never move, and inputs start zeroed, so
        the runs that capture read valid ids."""
        stream = self._pipeline.stream
        index = self.device.index
        top = self._graph_sizes[-1]
        graph = 0
        kept: list[int] = []
        for slot in self._pipeline.slots:
            binding: _Binding = slot.extra
            for spec in (*self._inputs, *self._outputs):
                _ensure(slot, spec.name, max(_nbytes(spec, top), 1), index)
            for spec in self._inputs:
                host = slot.host[spec.name]
                host.view(np.uint8, (host.nbytes,)).fill(0)
                slot.gpu[spec.name].copy_from(host, host.nbytes, stream)
            first = slot.index == self._pipeline.slots[0].index
            for rows in self._graph_sizes if first else kept:
                for spec in self._inputs:
                    shape = (rows, *spec.dims[1:])
                    pointer = slot.gpu[spec.name].pointer
                    binding.input(spec.name, index, spec.datatype.numpy, shape, pointer)
                for spec in self._outputs:
                    shape = (rows, *spec.dims[1:])
                    pointer = slot.gpu[spec.name].pointer
                    binding.output(spec.name, index, spec.datatype.numpy, shape, pointer)
                graph += 1  # ids from 1: ONNX Runtime keeps 0 for itself
                options = self._options_for(graph)
                for _ in range(WARM_RUNS):
                    self._session.run_with_iobinding(binding.binding, options)
                if first:
                    replay = self._timed(binding, options)
                    plain = self._timed(binding, self._run_options)
                    self.graph_timings[rows] = (replay, plain)
                    if replay > GRAPH_GAIN * plain:
                        break  # this size and larger ones run plainly
                    kept.append(rows)
                self._graph_runs[(slot.index, rows)] = options
        stream.synchronize()
        self._graph_sizes = tuple(kept)

    def _timed(self, binding: _Binding, options: Any, runs: int = 7) -> float:
        """Seconds of one run to completion, the fastest of `runs`: the least disturbed by
        whatever else the host does (a median of a few runs swayed too much)."""
        took = []
        for _ in range(runs):
            start = time.perf_counter()
            self._session.run_with_iobinding(binding.binding, options)
            self._pipeline.stream.synchronize()
            took.append(time.perf_counter() - start)
        return min(took)

    @property
    def graphs(self) -> int:
        """How many CUDA graphs this instance has captured."""
        return len(self._graph_runs)

    @property
    def name(self) -> str:
        return self._name

    @property
    def profile(self) -> Profile:
        return self._profile

    async def run(self, feed: Feed) -> ExecutionResult:
        return await self._pipeline.run(feed)

    def _launch(self, feed: Feed, slot: Slot) -> Launched:
        """Gather into the slot's pinned memory, then enqueue copies in, the model, copies out.

        One I/O binding per slot; a tensor is rebound only when its shape or buffer changed
        since the slot's last batch (binding costs tens of µs per tensor). Outputs whose dims
        (batch aside) are not fixed are left to ONNX Runtime, which copies them to the host.
        """
        binding: _Binding = slot.extra
        index = self.device.index
        stream = self._pipeline.stream
        for spec in self._inputs:
            first = feed.parts[0][spec.name]
            padded = feed.padded.get(spec.name)
            shape = (feed.rows, *(padded[0] if padded else first.shape[1:]))
            nbytes = math.prod(shape) * first.dtype.itemsize
            _ensure(slot, spec.name, nbytes, index)
            gather_into(feed, spec.name, slot.host[spec.name].view(first.dtype, shape))
            slot.gpu[spec.name].copy_from(slot.host[spec.name], nbytes, stream)
            binding.input(spec.name, index, first.dtype, shape, slot.gpu[spec.name].pointer)
        shapes: dict[str, tuple[int, ...]] = {}
        for spec in self._outputs:
            if spec.name in self._host_outputs:
                binding.output_to_host(spec.name)  # sized by the run: ONNX Runtime copies
                continue
            shape = (feed.rows, *spec.dims[1:])
            _ensure(slot, spec.name, math.prod(shape) * spec.datatype.numpy.itemsize, index)
            pointer = slot.gpu[spec.name].pointer
            binding.output(spec.name, index, spec.datatype.numpy, shape, pointer)
            shapes[spec.name] = shape
        self._session.run_with_iobinding(binding.binding, self._run_options)
        for spec in self._outputs:
            if spec.name in shapes:
                nbytes = math.prod(shapes[spec.name]) * spec.datatype.numpy.itemsize
                slot.host[spec.name].copy_from(slot.gpu[spec.name], nbytes, stream)
        on_host: dict[str, np.ndarray] = {}
        if self._host_outputs:  # ONNX Runtime synchronized for these itself
            names = [s.name for s in self._outputs]
            values = binding.binding.copy_outputs_to_cpu()
            on_host = {n: values[names.index(n)] for n in self._host_outputs}
        return Launched(stream.record(), shapes, on_host)

    def _launch_graph(self, feed: Feed, slot: Slot) -> Launched:
        """With graphs: gather into the rows of the smallest graph that holds the batch, zero
        the rest, copy them in, replay that graph (it reads and writes the addresses it was
        captured with; the binding is not consulted), copy the batch's own rows out."""
        rows = feed.rows
        if not self._graph_sizes or rows > self._graph_sizes[-1]:
            return self._launch(feed, slot)  # too large for a graph to pay: a plain run
        size = graph_size(self._graph_sizes, rows)
        stream = self._pipeline.stream
        for spec in self._inputs:
            host = slot.host[spec.name]
            view = host.view(spec.datatype.numpy, (size, *spec.dims[1:]))
            gather_into(feed, spec.name, view[:rows])
            if size > rows:
                view[rows:] = 0
            slot.gpu[spec.name].copy_from(host, view.nbytes, stream)
        self._session.run_with_iobinding(slot.extra.binding, self._graph_runs[(slot.index, size)])
        shapes: dict[str, tuple[int, ...]] = {}
        for spec in self._outputs:
            shapes[spec.name] = (rows, *spec.dims[1:])
            slot.host[spec.name].copy_from(slot.gpu[spec.name], _nbytes(spec, rows), stream)
        return Launched(None, shapes)  # only the copies out are left: wait for the stream

    async def close(self) -> None:
        await asyncio.to_thread(self._pipeline.close)
