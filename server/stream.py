"""ModelStreamInfer: many requests in flight on one stream, each answered as soon as it is ready,
with memory bounded whatever the client does.

    read ──► (room in the window?) ──► one task per request ──► answers ──► write (yield)
      ▲                                                                        │
      └──────────────── window: requests read but not yet sent ◄───────────────┘

The window bounds the requests read but not yet answered on the wire, by count and by bytes.
A client that sends without reading its answers fills it: the server then stops reading that
stream (HTTP/2 flow control holds the client's sends) until answers drain. An error for one
request travels as that answer's `error_message` and the stream stays open. When the server
drains, the reader stops, the requests already read are answered, and the stream ends with
UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from ferry.proto import grpc_service_pb2 as pb
from ferry.server.registration import Undecodable


@dataclass(frozen=True)
class StreamLimits:
    """max_requests: requests one stream may have read and not yet answered; max_bytes: their
    input bytes (one request past it is always allowed, so any single request can pass)."""

    max_requests: int = 256
    max_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_requests < 1 or self.max_bytes < 1:
            raise ValueError(
                f"stream limits must be >= 1, got {self.max_requests} requests, "
                f"{self.max_bytes} bytes"
            )


class _Window:
    def __init__(self, limits: StreamLimits) -> None:
        self._limits = limits
        self.requests = 0
        self.nbytes = 0
        self._room = asyncio.Event()
        self._room.set()

    async def wait_for_room(self) -> None:
        limits = self._limits
        while self.requests >= limits.max_requests or self.nbytes >= limits.max_bytes:
            self._room.clear()
            await self._room.wait()

    def take(self, nbytes: int) -> None:
        self.requests += 1
        self.nbytes += nbytes

    def give_back(self, nbytes: int) -> None:
        self.requests -= 1
        self.nbytes -= nbytes
        self._room.set()


Answer = Callable[[pb.ModelInferRequest | Undecodable], Awaitable[pb.ModelStreamInferResponse]]
"""One stream entry's answer (a response, or an error as `error_message`); never raises."""


def _nbytes(request: pb.ModelInferRequest | Undecodable) -> int:
    if isinstance(request, Undecodable):
        return request.nbytes
    return sum(map(len, request.raw_input_contents)) or request.ByteSize()


class StreamStopped(Exception):
    """The server stopped reading the stream because it is draining."""


async def answer_stream(
    requests: AsyncIterator[pb.ModelInferRequest | Undecodable],
    answer: Answer,
    limits: StreamLimits,
    on_reader: Callable[[asyncio.Task[None]], None],
) -> AsyncIterator[pb.ModelStreamInferResponse]:
    """Answers for `requests`, in completion order. `on_reader` gets the reading task (draining
    cancels it); StreamStopped is raised after the last answer when that happened."""
    answers: asyncio.Queue[tuple[pb.ModelStreamInferResponse, int] | None] = asyncio.Queue()
    pending: set[asyncio.Task[None]] = set()
    window = _Window(limits)

    async def one(request: pb.ModelInferRequest | Undecodable, nbytes: int) -> None:
        answers.put_nowait((await answer(request), nbytes))

    async def read() -> None:
        await window.wait_for_room()
        async for request in requests:
            nbytes = _nbytes(request)
            window.take(nbytes)
            task = asyncio.create_task(one(request, nbytes))
            pending.add(task)
            task.add_done_callback(pending.discard)
            await window.wait_for_room()

    reader = asyncio.create_task(read())
    reader.add_done_callback(lambda _: answers.put_nowait(None))
    on_reader(reader)
    read_over = False
    try:
        while not (read_over and not window.requests):  # every request read was answered
            item = await answers.get()
            if item is None:
                read_over = True
                continue
            response, nbytes = item
            yield response
            window.give_back(nbytes)
        if reader.cancelled():
            raise StreamStopped
        reader.result()  # a broken request stream is the RPC's error
    finally:
        for task in (reader, *pending):
            task.cancel()
        await asyncio.gather(reader, *pending, return_exceptions=True)
