"""CUDA graphs on a real GPU (marker `gpu`): a captured graph replays the captured work with
whatever the captured addresses hold now; a failing capture leaves the stream usable."""

from __future__ import annotations

import numpy as np
import pytest

from ferry.engines.cuda.devices import discover

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def gpu() -> None:
    found = discover()
    if not found.devices:
        pytest.skip(f"no GPU: {found.reason}")


def test_a_graph_replays_its_copies_on_fresh_data() -> None:
    from cuda.bindings import runtime

    from ferry.engines.cuda.devices import check
    from ferry.engines.cuda.graph import capture
    from ferry.engines.cuda.stream import DeviceBuffer, PinnedBuffer, Stream

    n = 4096
    stream = Stream(0)
    host_in, host_out = PinnedBuffer(n * 4), PinnedBuffer(n * 4)
    source, target = DeviceBuffer(n * 4, 0), DeviceBuffer(n * 4, 0)

    def device_to_device() -> None:
        kind = runtime.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        check(
            runtime.cudaMemcpyAsync(target.pointer, source.pointer, n * 4, kind, stream.handle),
            "cudaMemcpyAsync",
        )

    graph = capture(stream, device_to_device)  # records only: nothing is copied yet
    try:
        for value in (1.0, 7.5):
            host_in.view(np.float32, (n,))[...] = value
            source.copy_from(host_in, n * 4, stream)
            graph.launch(stream)
            host_out.copy_from(target, n * 4, stream)
            stream.synchronize()
            assert np.all(host_out.view(np.float32, (n,)) == value)
    finally:
        graph.close()
        stream.close()
        for buffer in (host_in, host_out, source, target):
            buffer.close()


def test_a_capture_that_fails_ends_and_the_stream_still_works() -> None:
    from ferry.engines.cuda.graph import capture
    from ferry.engines.cuda.stream import Stream

    stream = Stream(0)

    def broken() -> None:
        raise RuntimeError("the enqueue failed")

    try:
        with pytest.raises(RuntimeError, match="the enqueue failed"):
            capture(stream, broken)
        stream.synchronize()  # not left capturing: this would fail if it were
        graph = capture(stream, lambda: None)
        graph.launch(stream)
        stream.synchronize()
        graph.close()
    finally:
        stream.close()
