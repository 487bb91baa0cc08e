"""The CUDA pieces a GPU instance uses, gathered in one record.

A GPU instance asks this record for streams, pinned and device buffers, the current device and
graph capture instead of importing cuda-python itself. On a GPU host the record is `real()`;
the CI machines have no GPU, so the TensorRT backend's unit tests hand in a double that keeps
"device" memory on the host (tests/doubles/cuda_host.py) and run the instance's whole pipeline:
gather, copies, shapes, addresses, execution and graph replay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CudaToolkit:
    stream: Callable[[int], Any]  # device -> Stream
    pinned: Callable[[int], Any]  # nbytes -> PinnedBuffer
    device_buffer: Callable[[int, int], Any]  # nbytes, device -> DeviceBuffer
    use_device: Callable[[int], None]  # make a device current on the calling thread
    capture: Callable[[Any, Callable[[], None]], Any]  # stream, enqueue -> Graph


def real() -> CudaToolkit:
    """cuda-python's runtime API (engines/cuda/stream.py and graph.py)."""
    from ferry.engines.cuda.graph import capture
    from ferry.engines.cuda.stream import DeviceBuffer, PinnedBuffer, Stream, use_device

    return CudaToolkit(Stream, PinnedBuffer, DeviceBuffer, use_device, capture)
