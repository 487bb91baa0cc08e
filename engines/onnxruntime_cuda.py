"""ONNX Runtime on the GPU: the same `model.onnx`, run by the CUDA execution provider on Ferry's
own CUDA stream and buffers through I/O binding.

Each instance owns a non-blocking stream, one session bound to that stream
(`user_compute_stream`), pinned host staging buffers and device buffers for every input and
output, grown to the largest batch seen. A batch goes:

    gather each request straight into pinned memory (one copy per request)
    → host-to-device copies on the stream → the session enqueues its kernels on the stream
    → device-to-host copies of the outputs → the instance's thread waits for its stream
    → outputs copied out of pinned memory (one copy), so the buffers serve the next batch

All of that runs on the instance's own thread (one hand-off per batch); the event loop only
awaits the result, so it never blocks, and two or more instances keep batches in flight on
their own streams while the loop gathers the next ones.

Needs the `onnxruntime-gpu` build and cuda-python; without them the engine refuses to load with
a message saying so, and the CPU backend serves. An output whose dims (batch aside) are not fixed
cannot be sized before the run: ONNX Runtime allocates it and copies it to the host itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import EngineError, ModelLoadError
from engines.base import Device, ExecutionResult, Feed, Profile, TensorSpec, Timings
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


class _Staging:
    """A pinned buffer and a device buffer of one tensor, grown on demand."""

    def __init__(self, device: int) -> None:
        self.device = device
        self.nbytes = 0
        self.host: Any = None
        self.gpu: Any = None

    def ensure(self, nbytes: int) -> None:
        from engines.cuda.stream import DeviceBuffer, PinnedBuffer

        if nbytes <= self.nbytes:
            return
        self.close()
        size = max(nbytes, 2 * self.nbytes)
        self.host, self.gpu = PinnedBuffer(size), DeviceBuffer(size, self.device)
        self.nbytes = size

    def close(self) -> None:
        for buffer in (self.host, self.gpu):
            if buffer is not None:
                buffer.close()
        self.host = self.gpu = None
        self.nbytes = 0


class OnnxRuntimeCudaInstance:
    """One stream, one session on it, and staging buffers for every tensor."""

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
        from engines.cuda.stream import Stream, use_device

        self._name = name
        self._profile = profile
        self.device = device
        self._inputs = inputs
        self._outputs = outputs
        # Session calls enqueue work (kernel launches take CPU time): off the event loop, on a
        # thread that has this instance's device current.
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"ferry-{name}",
            initializer=use_device,
            initargs=(device.index,),
        )
        self._stream = Stream(device.index)
        session_options = ort.SessionOptions()
        session_options.log_severity_level = 3
        provider = {
            "device_id": str(device.index),
            "has_user_compute_stream": "1",
            "user_compute_stream": str(int(self._stream.handle)),
        }
        try:
            self._session = ort.InferenceSession(
                str(path), session_options, providers=[(CUDA, provider)]
            )
        except Exception as exc:  # ONNX Runtime's own exception types
            self._stream.close()
            raise ModelLoadError(f"{path}: onnxruntime CUDA cannot load it: {exc}") from exc
        self._run_options = ort.RunOptions()
        self._run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        self._staging = {s.name: _Staging(device.index) for s in (*inputs, *outputs)}

    @property
    def name(self) -> str:
        return self._name

    @property
    def profile(self) -> Profile:
        return self._profile

    async def run(self, feed: Feed) -> ExecutionResult:
        loop = asyncio.get_running_loop()
        try:
            # One hand-off per batch: the instance's thread gathers, enqueues, waits for its
            # stream and copies out; the event loop only awaits the result.
            return await loop.run_in_executor(self._executor, self._run_blocking, feed)
        except EngineError:
            raise
        except Exception as exc:  # ONNX Runtime's own exception types; translated here
            raise EngineError(f"onnxruntime CUDA failed to run the batch: {exc}") from exc

    def _run_blocking(self, feed: Feed) -> ExecutionResult:
        t0 = time.perf_counter_ns()
        shapes, binding = self._enqueue(feed)
        t1 = time.perf_counter_ns()
        self._stream.synchronize()
        t2 = time.perf_counter_ns()
        outputs: dict[str, np.ndarray] = {}
        host_bound = [s.name for s in self._outputs if s.name not in shapes]
        if host_bound:  # outputs ONNX Runtime allocated and copied to the host itself
            names = [s.name for s in self._outputs]
            values = binding.copy_outputs_to_cpu()
            outputs.update({n: values[names.index(n)] for n in host_bound})
        for spec in self._outputs:  # the one copy out: the staging buffers serve the next batch
            if spec.name in shapes:
                view = self._staging[spec.name].host.view(spec.datatype.numpy, shapes[spec.name])
                outputs[spec.name] = np.array(view)
        t3 = time.perf_counter_ns()
        return ExecutionResult(outputs, Timings(t1 - t0, t2 - t1, t3 - t2))

    def _enqueue(self, feed: Feed) -> tuple[dict[str, tuple[int, ...]], Any]:
        """Gather into pinned memory, then enqueue copies in, the model, and copies out."""
        binding = self._session.io_binding()
        index = self.device.index
        for spec in self._inputs:
            first = feed.parts[0][spec.name]
            padded = feed.padded.get(spec.name)
            shape = (feed.rows, *(padded[0] if padded else first.shape[1:]))
            nbytes = int(np.prod(shape)) * first.dtype.itemsize
            staging = self._staging[spec.name]
            staging.ensure(nbytes)
            gather_into(feed, spec.name, staging.host.view(first.dtype, shape))
            staging.gpu.copy_from(staging.host, nbytes, self._stream)
            binding.bind_input(spec.name, "cuda", index, first.dtype, shape, staging.gpu.pointer)
        shapes: dict[str, tuple[int, ...]] = {}
        for spec in self._outputs:
            if any(d < 0 for d in spec.dims[1:]):
                binding.bind_output(spec.name, "cpu")  # sized by the run: ONNX Runtime copies
                continue
            shape = (feed.rows, *spec.dims[1:])
            self._staging[spec.name].ensure(int(np.prod(shape)) * spec.datatype.numpy.itemsize)
            binding.bind_output(
                spec.name,
                "cuda",
                index,
                spec.datatype.numpy,
                shape,
                self._staging[spec.name].gpu.pointer,
            )
            shapes[spec.name] = shape
        self._session.run_with_iobinding(binding, self._run_options)
        for spec in self._outputs:
            if spec.name not in shapes:
                continue
            staging = self._staging[spec.name]
            nbytes = int(np.prod(shapes[spec.name])) * spec.datatype.numpy.itemsize
            staging.host.copy_from(staging.gpu, nbytes, self._stream)
        return shapes, binding

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._stream.close()
        for staging in self._staging.values():
            staging.close()
