"""Streams, events, pinned and device buffers on a real GPU (marker `gpu`): bytes survive the
round trip, completion never blocks the event loop, streams overlap, errors name CUDA's error."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ferry.common.errors import CudaError
from ferry.engines.cuda.devices import discover

pytestmark = [pytest.mark.gpu, pytest.mark.asyncio]


@pytest.fixture(scope="module", autouse=True)
def gpu() -> None:
    found = discover()
    if not found.devices:
        pytest.skip(f"no GPU: {found.reason}")


async def round_trip(data: np.ndarray) -> np.ndarray:
    from ferry.engines.cuda.stream import DeviceBuffer, PinnedBuffer, Stream

    stream, src, dst = Stream(0), PinnedBuffer(data.nbytes), PinnedBuffer(data.nbytes)
    device = DeviceBuffer(data.nbytes, 0)
    try:
        src.view(data.dtype, data.shape)[...] = data  # the one copy in
        device.copy_from(src, data.nbytes, stream)
        dst.copy_from(device, data.nbytes, stream)
        await stream.done()
        return dst.view(data.dtype, data.shape).copy()
    finally:
        stream.close()
        for buffer in (src, dst, device):
            buffer.close()


async def test_bytes_survive_host_device_host() -> None:
    data = np.random.default_rng(0).standard_normal((1024, 39)).astype(np.float32)
    np.testing.assert_array_equal(await round_trip(data), data)


async def test_waiting_for_the_gpu_does_not_block_the_event_loop() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    running = asyncio.create_task(ticker())
    data = np.ones(512 * 1024 * 1024, dtype=np.uint8)  # 512 MiB each way: tens of ms
    result = await round_trip(data)
    running.cancel()
    assert result.sum() == data.size
    assert ticks >= 5  # the loop kept running while the copies were in flight


async def test_two_streams_run_at_once() -> None:
    rng = np.random.default_rng(1)
    first = rng.integers(0, 1000, (4096, 26)).astype(np.int64)
    second = rng.standard_normal((4096, 13)).astype(np.float32)
    a, b = await asyncio.gather(round_trip(first), round_trip(second))
    np.testing.assert_array_equal(a, first)
    np.testing.assert_array_equal(b, second)


async def test_cuda_failures_name_the_error() -> None:
    from ferry.engines.cuda.stream import DeviceBuffer, PinnedBuffer, Stream

    with pytest.raises(CudaError, match=r"cudaMalloc.*cudaErrorMemoryAllocation"):
        DeviceBuffer(1 << 50, 0)
    small, stream, device = PinnedBuffer(16), Stream(0), DeviceBuffer(16, 0)
    try:
        with pytest.raises(ValueError, match="exceeds a buffer"):
            device.copy_from(small, 32, stream)
    finally:
        stream.close()
        small.close()
        device.close()
