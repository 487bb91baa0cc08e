"""One client process's load: senders (unary, streaming) and the two arrival disciplines.

Closed loop keeps N requests in flight. Open loop sends at Poisson arrival times fixed in
advance, whatever the server does; each latency is measured from the request's intended send
time whenever the client sent it late, so a slow server cannot hide queueing by slowing the
client down (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import grpc
import numpy as np

from ferry.loadtest.profile import RateProfile
from ferry.loadtest.stats import Tally
from ferry.loadtest.workload import Prepared, with_id
from ferry.proto import grpc_service_pb2 as pb

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
LATE_S = 0.001  # an open-loop send this much after its intended time counts as late


class Sender(Protocol):
    async def __call__(self, request: Prepared) -> str | None:
        """Send one request and wait for its answer: None when it succeeded, else the status."""
        ...


class UnarySender:
    """ModelInfer with pre-serialized bytes; the answer's bytes are not even parsed."""

    def __init__(
        self, channel: grpc.aio.Channel, deadline_s: float | None, target: str = ""
    ) -> None:
        self._call = channel.unary_unary(INFER)
        self._deadline = deadline_s
        self.target = target  # the replica this sender's channel connects to
        self.answered = 0

    async def __call__(self, request: Prepared) -> str | None:
        try:
            await self._call(request.payload, timeout=self._deadline)
        except grpc.aio.AioRpcError as exc:
            return str(exc.code().name)
        self.answered += 1
        return None


class StreamSender:
    """Many requests in flight on one ModelStreamInfer stream, matched to answers by id."""

    def __init__(self, channel: grpc.aio.Channel, target: str = "") -> None:
        self._call = channel.stream_stream(STREAM)
        self.target = target
        self.answered = 0
        self._outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._waiting: dict[str, asyncio.Future[str | None]] = {}
        self._ids = itertools.count()
        self._reader: asyncio.Task[None] | None = None

    async def _requests(self) -> AsyncIterator[bytes]:
        while (payload := await self._outbox.get()) is not None:
            yield payload

    async def _read(self) -> None:
        call = self._call(self._requests())
        try:
            async for raw in call:
                answer = pb.ModelStreamInferResponse.FromString(raw)
                future = self._waiting.pop(answer.infer_response.id, None)
                if future is not None and not future.done():
                    future.set_result("STREAM_ERROR" if answer.error_message else None)
                    self.answered += 0 if answer.error_message else 1
        except grpc.aio.AioRpcError as exc:
            for future in self._waiting.values():
                if not future.done():
                    future.set_result(str(exc.code().name))
            self._waiting.clear()

    async def __call__(self, request: Prepared) -> str | None:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read())
        key = str(next(self._ids))
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        self._outbox.put_nowait(with_id(request.payload, key))
        return await future

    async def close(self) -> None:
        self._outbox.put_nowait(None)
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, timeout=10)
            except TimeoutError:
                self._reader.cancel()


async def closed_loop(
    senders: list[Sender],
    pool: list[Prepared],
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    tally: Tally,
) -> None:
    """`concurrency` workers, each with one request in flight, until the duration ends.
    Requests take the senders in turn (round-robin), so several targets (replicas) get equal
    shares of the requests whatever each one's speed, as a per-request balancer gives them."""
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup_s
    stop = start + duration_s
    turn = itertools.count()
    senders_turn = itertools.count()

    async def worker() -> None:
        while (now := loop.time()) < stop:
            request = pool[next(turn) % len(pool)]
            send = senders[next(senders_turn) % len(senders)]
            t0 = time.perf_counter()
            status = await send(request)
            latency = time.perf_counter() - t0
            if now >= start:
                tally.sent += 1
                if status is None:
                    tally.latencies_s.append(latency)
                    tally.rows += request.rows
                else:
                    tally.errors[status] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def arrival_times(rate: float, start: float, stop: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson arrivals in [start, stop): exponential gaps with mean 1/rate, drawn up front."""
    expected = int(rate * (stop - start) * 1.2) + 16
    times = start + np.cumsum(rng.exponential(1.0 / rate, expected))
    while times[-1] < stop:  # rare: draw more
        more = times[-1] + np.cumsum(rng.exponential(1.0 / rate, expected))
        times = np.concatenate([times, more])
    return times[times < stop]


async def open_loop(
    senders: list[Sender],
    pool: list[Prepared],
    rate: float,
    warmup_s: float,
    duration_s: float,
    tally: Tally,
    *,
    now: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    seed: int = 0,
    max_outstanding: int = 20_000,
    profile: RateProfile | None = None,
) -> None:
    """Send at Poisson times; count what was sent after the warm-up.

    A request due while `max_outstanding` are unanswered is not sent and counts as
    CLIENT_OVERLOADED: the server is far past saturation and the client's memory is bounded.
    """
    rng = np.random.default_rng(seed)
    begin = now()
    measured_from = begin + warmup_s
    if profile is None:
        times = arrival_times(rate, begin, measured_from + duration_s, rng)
    else:  # the warm-up at the profile's first rate, then the profile
        first = profile.segments[0].start_rate or profile.peak
        warm = arrival_times(first, begin, measured_from, rng) if warmup_s > 0 else np.empty(0)
        times = np.concatenate([warm, measured_from + profile.arrivals(rng)])
    tasks: set[asyncio.Task[None]] = set()

    async def one(index: int, intended: float, counted: bool) -> None:
        request = pool[index % len(pool)]
        sent = now()
        status = await senders[index % len(senders)](request)
        latency = now() - min(intended, sent)
        if counted:
            tally.timeline.append((intended - measured_from, latency, status is None))
            if status is None:
                tally.latencies_s.append(latency)
                tally.rows += request.rows
            else:
                tally.errors[status] += 1

    for index, intended in enumerate(times):
        wait = intended - now()
        if wait > 0.0005:  # sleeping is coarse: send up to half a millisecond early
            await sleep(wait)
        counted = intended >= measured_from
        if counted:
            tally.sent += 1
            if now() - intended > LATE_S:
                tally.late_sends += 1
        if len(tasks) >= max_outstanding:
            if counted:
                tally.errors["CLIENT_OVERLOADED"] += 1
            continue
        task = asyncio.create_task(one(index, float(intended), counted))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
