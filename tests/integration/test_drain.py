"""SIGTERM under load loses no accepted request: health turns NOT_SERVING at once, new calls get
UNAVAILABLE (retryable) instead of CANCELLED, accepted ones finish, open streams answer what they
read and end with UNAVAILABLE; one process or several."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ferry.proto import grpc_service_pb2 as pb
from ferry.proto import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import RunningServer, start_server, stop_server

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}


def history(ident: int) -> pb.ModelInferRequest:
    """A request to `history_padded`, whose batches wait 300 ms for company."""
    request = pb.ModelInferRequest(model_name="history_padded", id=str(ident))
    request.inputs.add(name="history", datatype="INT64", shape=[1, 5])
    request.inputs.add(name="user", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(np.arange(1, 6, dtype=np.int64)[None].tobytes())
    request.raw_input_contents.append(np.zeros((1, 16), np.float32).tobytes())
    return request


def lookup(ident: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="lookup", id=str(ident))
    request.inputs.add(name="ids", datatype="INT64", shape=[1, 1])
    request.raw_input_contents.append(np.array([[ident % 100]], np.int64).tobytes())
    return request


async def load(address: str, signalled: asyncio.Event, senders: int) -> list[tuple[str, float]]:
    """Closed-loop senders, each on its own connection, until the server refuses them (a
    client would then go to another replica). Returns (status, finished at) of every call."""
    outcomes: list[tuple[str, float]] = []

    async def sender(index: int) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(address, options=options) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            n = 0
            while True:
                try:
                    await stub.ModelInfer(lookup(index * 1000 + n), timeout=30)
                    outcomes.append(("OK", time.monotonic()))
                except grpc.aio.AioRpcError as exc:
                    outcomes.append((exc.code().name, time.monotonic()))
                    return
                n += 1

    await asyncio.gather(*(sender(i) for i in range(senders)))
    return outcomes


async def held_request(address: str) -> tuple[str, float]:
    """One `history_padded` call: (status, finished at)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            await stub.ModelInfer(history(0), timeout=30)
            return "OK", time.monotonic()
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, time.monotonic()


def http_status(server: RunningServer, path: str) -> int:
    base = server.metrics_url.rsplit("/metrics", 1)[0]
    try:
        with urllib.request.urlopen(base + path, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.asyncio
async def test_sigterm_under_load_answers_every_accepted_request(
    model_repo: Path, tmp_path: Path, workers: int
) -> None:
    server = start_server(model_repo, tmp_path, workers=workers)
    try:
        signalled = asyncio.Event()
        running = asyncio.create_task(load(server.address, signalled, senders=24))
        await asyncio.sleep(1.0)
        # One request certainly accepted and unanswered at the signal: its batch waits 300 ms
        # for company. (The lookups' own are too quick to be sure one is in flight then.)
        held = asyncio.create_task(held_request(server.address))
        await asyncio.sleep(0.15)
        at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        if workers == 1:
            async with grpc.aio.insecure_channel(server.address) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
                # A liveness probe must not kill the pod in the middle of its drain.
                live = health_pb2.HealthCheckRequest(service="live")
                reply = await health.Check(live, timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert await asyncio.to_thread(http_status, server, "/v2/health/ready") == 400
            assert await asyncio.to_thread(http_status, server, "/v2/health/live") == 200
        outcomes = await asyncio.wait_for(running, timeout=30)
        held_status, held_at = await asyncio.wait_for(held, timeout=30)
        assert await asyncio.to_thread(server.process.wait, 30) == 0
    finally:
        if server.process.poll() is None:
            stop_server(server)
        server.log_file.close()
    statuses = {status for status, _ in outcomes}
    assert statuses <= {s.name for s in ALLOWED}, (statuses, server.log()[-2000:])
    assert (held_status, held_at > at) == ("OK", True)  # accepted before the signal: answered
    assert sum(1 for s, _ in outcomes if s == "UNAVAILABLE") == 24  # every sender was refused


@pytest.mark.asyncio
async def test_a_stream_open_at_sigterm_answers_what_it_read_then_ends_unavailable(
    model_repo: Path, tmp_path: Path
) -> None:
    server = start_server(model_repo, tmp_path)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            sent = asyncio.Event()

            async def requests():  # type: ignore[no-untyped-def]
                for i in range(3):
                    yield history(i)
                sent.set()
                await asyncio.sleep(30)  # the client would send more, later

            call = stub.ModelStreamInfer(requests())
            await sent.wait()
            await asyncio.sleep(0.1)  # read by the server, waiting out the 300 ms batch delay
            server.process.send_signal(signal.SIGTERM)
            answers = []
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for answer in call:
                    answers.append(answer)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert sorted(a.infer_response.id for a in answers) == ["0", "1", "2"]
            assert not any(a.error_message for a in answers)
        assert await asyncio.to_thread(server.process.wait, 30) == 0
    finally:
        if server.process.poll() is None:
            stop_server(server)
        server.log_file.close()
