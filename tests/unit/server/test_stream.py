"""A stream's window: the server reads no more of a stream than its limits allow until answers
leave, whatever the client sends; draining answers what was read, then stops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ferry.proto import grpc_service_pb2 as pb
from ferry.server.registration import Undecodable
from ferry.server.stream import StreamLimits, StreamStopped, answer_stream

pytestmark = pytest.mark.asyncio


def request(i: int, nbytes: int = 100) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(id=str(i), raw_input_contents=[b"x" * nbytes])


async def endless(read: list[int], nbytes: int = 100) -> AsyncIterator[pb.ModelInferRequest]:
    i = 0
    while True:
        read.append(i)
        yield request(i, nbytes)
        i += 1


async def echo(item: pb.ModelInferRequest | Undecodable) -> pb.ModelStreamInferResponse:
    assert not isinstance(item, Undecodable)
    return pb.ModelStreamInferResponse(infer_response=pb.ModelInferResponse(id=item.id))


async def test_a_client_that_never_reads_stops_the_reading_at_the_limit() -> None:
    read: list[int] = []
    answers = answer_stream(endless(read), echo, StreamLimits(max_requests=8), lambda _: None)
    first = await anext(answers)  # one answer taken; the writer now waits on the client
    for _ in range(50):
        await asyncio.sleep(0)
    assert first.infer_response.id == "0"
    assert len(read) <= 8 + 2  # the window, the answer in hand, the one waiting for room
    taken = [await anext(answers) for _ in range(20)]  # the client reads: reading goes on
    assert [int(a.infer_response.id) for a in taken] == list(range(1, 21))
    await answers.aclose()


async def test_the_byte_limit_holds_too() -> None:
    read: list[int] = []
    limits = StreamLimits(max_requests=1000, max_bytes=10_000)
    answers = answer_stream(endless(read, nbytes=1000), echo, limits, lambda _: None)
    await anext(answers)
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(read) <= 10 + 2
    await answers.aclose()


async def test_draining_answers_what_was_read_then_stops() -> None:
    gate = asyncio.Event()
    readers: list[asyncio.Task[None]] = []

    async def slow(item: pb.ModelInferRequest | Undecodable) -> pb.ModelStreamInferResponse:
        await gate.wait()
        return await echo(item)

    async def three_then_wait() -> AsyncIterator[pb.ModelInferRequest]:
        for i in range(3):
            yield request(i)
        await asyncio.Event().wait()  # the client would send more later

    answers = answer_stream(three_then_wait(), slow, StreamLimits(), readers.append)
    got: list[str] = []

    async def collect() -> None:
        async for answer in answers:
            got.append(answer.infer_response.id)

    collecting = asyncio.create_task(collect())
    for _ in range(20):
        await asyncio.sleep(0)
    readers[0].cancel()  # the server drains: reading stops
    gate.set()
    with pytest.raises(StreamStopped):
        await asyncio.wait_for(collecting, timeout=5)
    assert sorted(got) == ["0", "1", "2"]
