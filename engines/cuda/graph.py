"""CUDA graphs: capture the work one call enqueues on a stream, then replay it with one launch.

    graph = capture(stream, lambda: context.execute_async_v3(stream.handle))
    graph.launch(stream)         the same kernels, same addresses, one CPU call
    graph.close()

A graph replays exactly what was captured: the same kernels on the same device addresses with
the same shapes. So it is keyed by the input shapes it was captured with, and the buffers it
reads and writes must stay where they were (Ferry's instances allocate them once, for their
profile's largest batch, and never move them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ferry.common.errors import CudaError
from ferry.engines.cuda.devices import check
from ferry.engines.cuda.stream import Stream


def _runtime() -> Any:
    from cuda.bindings import runtime

    return runtime


class Graph:
    """An instantiated (executable) graph; `launch` enqueues it on a stream."""

    def __init__(self, graph: Any, executable: Any) -> None:
        self._graph = graph
        self._executable = executable

    def launch(self, stream: Stream) -> None:
        check(_runtime().cudaGraphLaunch(self._executable, stream.handle), "cudaGraphLaunch")

    def close(self) -> None:
        rt = _runtime()
        if self._executable is not None:
            check(rt.cudaGraphExecDestroy(self._executable), "cudaGraphExecDestroy")
            self._executable = None
        if self._graph is not None:
            check(rt.cudaGraphDestroy(self._graph), "cudaGraphDestroy")
            self._graph = None


def capture(stream: Stream, enqueue: Callable[[], None]) -> Graph:
    """Capture what `enqueue` puts on `stream` (thread-local mode: other threads' CUDA calls
    are not disturbed) and instantiate it. Capture is always ended, even when `enqueue` fails,
    so the stream is never left capturing."""
    rt = _runtime()
    mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
    check(rt.cudaStreamBeginCapture(stream.handle, mode), "cudaStreamBeginCapture")
    try:
        enqueue()
    except BaseException:
        error, graph = rt.cudaStreamEndCapture(stream.handle)
        if error == rt.cudaError_t.cudaSuccess and graph is not None:
            rt.cudaGraphDestroy(graph)
        raise
    graph = check(rt.cudaStreamEndCapture(stream.handle), "cudaStreamEndCapture")
    try:
        executable = check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
    except CudaError:
        rt.cudaGraphDestroy(graph)
        raise
    return Graph(graph, executable)
