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

Needs the `onnxruntime-gpu` build and cuda-python; without them the engine refuses to load with
a message saying so, and the CPU backend serves. An output whose dims (batch aside) are not fixed
cannot be sized before the run: ONNX Runtime allocates it and copies it to the host itself.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ModelLoadError
from engines.base import Device, ExecutionResult, Feed, Profile, TensorSpec
from engines.cuda.pipeline import Launched, Slot, StreamPipeline
from engines.onnxruntime import OnnxRuntimeOptions, OnnxSignature, _spec
from engines.staging import gather_into

CUDA = "CUDAExecutionProvider"


class OnnxRuntimeCudaEngine(OnnxSignature):
    def __init__(self, path: Path, options: OnnxRuntimeOptions | None = None) -> None:
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

    def create_instance(
        self, name: str, device: Device, profile: Profile
    ) -> OnnxRuntimeCudaInstance:
        if device.kind != "gpu":
            raise ModelLoadError(f"instance {name}: the ONNX Runtime CUDA backend needs a GPU")
        return OnnxRuntimeCudaInstance(
            name, self._ort, self._path, self._options, self._inputs, self._outputs, device, profile
        )

    def close(self) -> None:
        return None


def _ensure(slot: Slot, name: str, nbytes: int, device: int) -> None:
    """Grow a slot's pinned and device buffers of one tensor to hold `nbytes` (doubling)."""
    from engines.cuda.stream import DeviceBuffer, PinnedBuffer

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


class OnnxRuntimeCudaInstance:
    """One stream, one session on it, and `in_flight` slots of staging buffers."""

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
    ) -> None:
        from engines.cuda import toolkit

        self._name = name
        self._profile = profile
        self.device = device
        self._inputs = inputs
        self._outputs = outputs
        self.in_flight = max(1, options.in_flight)
        self._options = options
        self._host_outputs = [s.name for s in outputs if any(d < 0 for d in s.dims[1:])]
        self._pipeline = StreamPipeline(name, device.index, toolkit.real(), self.in_flight, outputs)
        try:
            self._session = self._pipeline.call(self._open, ort, path)
        except BaseException:
            self._pipeline.close()
            raise
        self._run_options = ort.RunOptions()
        self._run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        self._pipeline.start(self._launch)

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
        try:
            session = ort.InferenceSession(str(path), session_options, providers=[(CUDA, provider)])
        except Exception as exc:  # ONNX Runtime's own exception types
            raise ModelLoadError(f"{path}: onnxruntime CUDA cannot load it: {exc}") from exc
        for slot in self._pipeline.slots:
            slot.extra = _Binding(session.io_binding())
        return session

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

    async def close(self) -> None:
        await asyncio.to_thread(self._pipeline.close)
