"""A double of Ferry's CUDA toolkit (engines/cuda/toolkit.py) whose "device" memory is host
memory, for the CI machines, which have no GPU.

It keeps the semantics a GPU instance depends on: buffers have fixed integer addresses; copies
and kernels are operations on a stream that run in order; a stream being captured records
operations instead of running them, and a graph replays exactly what was recorded, with the
addresses and shapes of capture time. Operations run at once when enqueued (a stream with
nothing ever pending), so `record`/`wait`/`synchronize` have nothing to wait for.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ferry.engines.cuda.toolkit import CudaToolkit

Operation = Callable[[], None]

STREAMS: dict[int, HostStream] = {}
_handles = itertools.count(0x7F000000)
current_device = threading.local()


class HostStream:
    def __init__(self, device: int = 0) -> None:
        self.device = device
        self.handle = next(_handles)
        self.capturing: list[Operation] | None = None
        self.operations = 0  # run so far (captured ones count when a graph replays them)
        STREAMS[self.handle] = self

    def enqueue(self, operation: Operation) -> None:
        if self.capturing is not None:
            self.capturing.append(operation)
        else:
            self.operations += 1
            operation()

    def record(self) -> object:
        return object()

    def wait(self, event: object) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def close(self) -> None:
        STREAMS.pop(self.handle, None)


class HostBuffer:
    """Stands for both a PinnedBuffer and a DeviceBuffer."""

    live = 0  # buffers allocated and not yet closed, across all doubles

    def __init__(self, nbytes: int, device: int = 0) -> None:
        self.nbytes = nbytes
        self.device = device
        self._memory = (ctypes.c_byte * nbytes)()
        self.pointer = ctypes.addressof(self._memory)
        HostBuffer.live += 1

    def view(self, dtype: Any, shape: tuple[int, ...], offset: int = 0) -> np.ndarray:
        count = int(np.prod(shape))
        array = np.frombuffer(self._memory, dtype=dtype, count=count, offset=offset)
        return array.reshape(shape)

    def copy_from(self, source: HostBuffer, nbytes: int, stream: HostStream) -> None:
        if nbytes > min(self.nbytes, source.nbytes):
            raise ValueError(f"copy of {nbytes} bytes exceeds a buffer")
        target, origin = self.pointer, source.pointer
        stream.enqueue(lambda: ctypes.memmove(target, origin, nbytes))

    def close(self) -> None:
        if self.pointer:
            self.pointer = 0
            HostBuffer.live -= 1


class HostGraph:
    def __init__(self, operations: list[Operation]) -> None:
        self.operations = operations
        self.launches = 0
        self.closed = False

    def launch(self, stream: HostStream) -> None:
        self.launches += 1
        for operation in self.operations:
            stream.enqueue(operation)

    def close(self) -> None:
        self.closed = True


def capture(stream: HostStream, enqueue: Callable[[], None]) -> HostGraph:
    stream.capturing = []
    try:
        enqueue()
        return HostGraph(stream.capturing)
    finally:
        stream.capturing = None


def use_device(index: int) -> None:
    current_device.index = index


def toolkit() -> CudaToolkit:
    return CudaToolkit(HostStream, HostBuffer, HostBuffer, use_device, capture)
