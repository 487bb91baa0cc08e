"""CUDA streams, events and buffers through cuda-python's runtime API, every call checked.

    stream = Stream(device)              a non-blocking stream on one device
    host = PinnedBuffer(nbytes)          page-locked host memory (async copies need it)
    gpu = DeviceBuffer(nbytes, device)   device memory
    gpu.copy_from(host.view(...), stream); ...; host.copy_from(gpu, stream)
    await stream.done()                  completion, without blocking the event loop

`done()` records an event on the stream and waits for it on a thread of the stream's own (the
event loop only awaits a future), so several batches can be in flight on several streams while
the loop keeps gathering the next ones. Buffers are freed by `close()`, never by the garbage
collector: freeing memory a stream still uses is a bug CUDA does not report.
"""

from __future__ import annotations

import asyncio
import ctypes
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ferry.common.cpus import widen_to_compute
from ferry.engines.cuda.devices import check


def _runtime() -> Any:
    from cuda.bindings import runtime

    return runtime


def use_device(index: int) -> None:
    """Make `index` the calling thread's current CUDA device."""
    check(_runtime().cudaSetDevice(index), f"cudaSetDevice({index})")


class Stream:
    def __init__(self, device: int = 0) -> None:
        rt = _runtime()
        self.device = device
        use_device(device)
        self.handle = check(
            rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags"
        )
        self._waiter = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ferry-cuda-wait", initializer=widen_to_compute
        )

    def record(self) -> Any:
        """An event recorded at the stream's current end."""
        rt = _runtime()
        event = check(
            rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming), "cudaEventCreateWithFlags"
        )
        check(rt.cudaEventRecord(event, self.handle), "cudaEventRecord")
        return event

    def wait(self, event: Any) -> None:
        """Block the calling thread until `event` (from record()) has happened; destroy it."""
        rt = _runtime()
        try:
            check(rt.cudaEventSynchronize(event), "cudaEventSynchronize")
        finally:
            check(rt.cudaEventDestroy(event), "cudaEventDestroy")

    async def done(self) -> None:
        """Wait until everything enqueued so far on the stream has finished."""
        event = self.record()
        await asyncio.get_running_loop().run_in_executor(self._waiter, self.wait, event)

    def synchronize(self) -> None:
        check(_runtime().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        self.synchronize()
        self._waiter.shutdown(wait=True)
        check(_runtime().cudaStreamDestroy(self.handle), "cudaStreamDestroy")


class PinnedBuffer:
    """Page-locked host memory, readable and writable as numpy arrays without copies."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.pointer = int(check(_runtime().cudaMallocHost(nbytes), f"cudaMallocHost({nbytes})"))
        self._memory = (ctypes.c_byte * nbytes).from_address(self.pointer)

    def view(self, dtype: Any, shape: tuple[int, ...], offset: int = 0) -> np.ndarray:
        """An array over the buffer's bytes from `offset`: writing it writes pinned memory."""
        count = int(np.prod(shape))
        array = np.frombuffer(
            memoryview(self._memory).cast("B"), dtype=dtype, count=count, offset=offset
        )
        return array.reshape(shape)

    def copy_from(self, source: DeviceBuffer, nbytes: int, stream: Stream) -> None:
        """Enqueue device-to-host of `nbytes` into the start of this buffer."""
        rt = _runtime()
        kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(
            rt.cudaMemcpyAsync(self.pointer, source.pointer, nbytes, kind, stream.handle),
            "cudaMemcpyAsync(device to host)",
        )

    def close(self) -> None:
        if self.pointer:
            check(_runtime().cudaFreeHost(self.pointer), "cudaFreeHost")
            self.pointer = 0


class DeviceBuffer:
    def __init__(self, nbytes: int, device: int = 0) -> None:
        self.nbytes = nbytes
        self.device = device
        use_device(device)
        self.pointer = int(check(_runtime().cudaMalloc(nbytes), f"cudaMalloc({nbytes})"))

    def copy_from(self, source: PinnedBuffer, nbytes: int, stream: Stream) -> None:
        """Enqueue host-to-device of the first `nbytes` of a pinned buffer."""
        if nbytes > min(self.nbytes, source.nbytes):
            raise ValueError(f"copy of {nbytes} bytes exceeds a buffer")
        rt = _runtime()
        kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(
            rt.cudaMemcpyAsync(self.pointer, source.pointer, nbytes, kind, stream.handle),
            "cudaMemcpyAsync(host to device)",
        )

    def close(self) -> None:
        if self.pointer:
            check(_runtime().cudaFree(self.pointer), "cudaFree")
            self.pointer = 0
