"""Faults and hostile input against the real server: each fails alone, with a precise status,
and tells nobody else's data."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as tca
from tritonclient.utils import InferenceServerException

from ferry.proto import grpc_service_pb2 as pb
from ferry.proto import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import RunningServer, start_server, stop_server


async def _lookup(client: tca.InferenceServerClient, ident: int) -> np.ndarray | str:
    tensor = tca.InferInput("ids", [1, 1], "INT64")
    tensor.set_data_from_numpy(np.array([[ident]], dtype=np.int64))
    try:
        result = await client.infer("lookup", [tensor])
    except InferenceServerException as exc:
        return f"{exc.status()} {exc.message()}"
    return result.as_numpy("y")


@pytest.mark.asyncio
async def test_poisoned_requests_fail_alone_and_tell_only_their_own_data(
    server: RunningServer,
) -> None:
    """150 good requests (ids 0..99) sent with 50 poisoned ones (ids 5000+): the lookup fails a
    whole batch on a bad id; Ferry finds the culprits, answers everyone else."""
    client = tca.InferenceServerClient(server.address)
    try:
        good = [i % 100 for i in range(150)]
        bad = [5000 + i for i in range(50)]
        order = [("good", g) for g in good] + [("bad", b) for b in bad]
        order = [order[(i * 37) % len(order)] for i in range(len(order))]  # mixed, deterministic
        answers = await asyncio.gather(*(_lookup(client, ident) for _, ident in order))
    finally:
        await client.close()
    for (kind, ident), answer in zip(order, answers, strict=True):
        if kind == "good":
            assert isinstance(answer, np.ndarray), answer
            np.testing.assert_array_equal(answer[0], np.arange(4 * ident, 4 * ident + 4))
        else:
            assert isinstance(answer, str) and "StatusCode.INTERNAL" in answer
            named = {int(n) for n in re.findall(r"\b5\d{3}\b", answer)}
            assert named <= {ident}, answer  # at most its own id, never a batch-mate's
    metrics = await asyncio.to_thread(_scrape, server.metrics_url)
    assert _counter(metrics, "ferry_isolated_batches_total") >= 1  # they really shared batches
    assert 1 <= _counter(metrics, "ferry_isolated_culprits_total") <= len(bad)


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def _counter(metrics: str, name: str) -> float:
    found = re.search(name + r'\{model="lookup",version="1"\} (\S+)', metrics)
    assert found, name
    return float(found.group(1))


def test_bytes_that_are_no_request_get_invalid_argument(server: RunningServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as info:
            infer(b"\xff\xff\xff\xff not protobuf", timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid ModelInferRequest" in str(info.value.details())
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        good = pb.ModelInferRequest(model_name="no_such_model", id="after").SerializeToString()
        answers = list(stream(iter([b"\x0a\xff", good]), timeout=10))
        replies = [pb.ModelStreamInferResponse.FromString(a) for a in answers]
        assert "not a valid ModelInferRequest" in replies[0].error_message
        assert replies[1].infer_response.id == "after"  # the stream went on
        assert "unknown model" in replies[1].error_message


def test_a_huge_name_is_cut_in_the_error_and_the_status_arrives(server: RunningServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(pb.ModelInferRequest(model_name="m" * 10_000), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # not RESOURCE_EXHAUSTED
    details = str(info.value.details())
    assert len(details) < 300 and "(10000 characters)" in details


@pytest.mark.parametrize(
    ("path", "status"),
    [("/metrics", 200), ("/", 200), ("/healthz", 404), ("/v2/health/live", 200),
     ("/v2/health/ready", 200), ("/v2/health/readyz", 404)],
)
def test_the_metrics_port_answers_only_where_the_metrics_are(
    server: RunningServer, path: str, status: int
) -> None:
    base = server.metrics_url.rsplit("/metrics", 1)[0]
    try:
        with urllib.request.urlopen(base + path, timeout=10) as response:
            code, body = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        code, body = exc.code, ""
    assert code == status
    if status == 200 and not path.startswith("/v2/"):
        assert "nv_inference_request_success" in body
        for gauge in (
            "ferry_event_loop_tasks",
            "ferry_event_loop_lag_seconds",
            "ferry_memory_budget_bytes",
        ):
            assert gauge in body
        assert "ferry_requests_in_flight" in body


@pytest.mark.asyncio
async def test_past_the_memory_budget_requests_are_refused_at_once(
    model_repo: Path, tmp_path: Path
) -> None:
    """A budget of about six lookups: of 30 sent at once, the ones past it get UNAVAILABLE
    quickly, the others their answers; a message bigger than the budget is not even decoded."""
    own = start_server(model_repo, tmp_path, "--memory-budget", "200000")
    client = tca.InferenceServerClient(own.address)
    try:
        started = time.monotonic()
        answers = await asyncio.gather(*(_lookup(client, i) for i in range(30)))
        refused = [a for a in answers if isinstance(a, str)]
        assert all("StatusCode.UNAVAILABLE" in a and "memory budget" in a for a in refused)
        assert 1 <= len(refused) < 30
        assert time.monotonic() - started < 10
        big = tca.InferInput("ids", [20_000, 1], "INT64")
        big.set_data_from_numpy(np.zeros((20_000, 1), np.int64))
        with pytest.raises(InferenceServerException, match="memory budget") as info:
            await client.infer("lookup", [big])
        assert "StatusCode.UNAVAILABLE" in str(info.value.status())
        assert isinstance(await _lookup(client, 7), np.ndarray)  # everything was given back
    finally:
        await client.close()
        stop_server(own)


@pytest.mark.asyncio
async def test_a_stream_client_that_never_reads_is_held_back(
    model_repo: Path, tmp_path: Path
) -> None:
    """With a window of 4 unanswered requests, the server stops reading a stream whose client
    sends 256 KiB requests and reads nothing: it computes only a handful, the client's writes
    stall, and the server answers others meanwhile."""
    own = start_server(model_repo, tmp_path, "--max-stream-requests", "4")
    client = tca.InferenceServerClient(own.address)
    try:
        request = pb.ModelInferRequest(model_name="echo")
        request.inputs.add(name="x", datatype="FP32", shape=[1, 65536])
        request.raw_input_contents.append(np.ones(65536, np.float32).tobytes())
        async with grpc.aio.insecure_channel(own.address) as channel:
            call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
            written = 0

            async def write() -> None:
                nonlocal written
                for _ in range(400):  # 100 MiB, if nothing held the client back
                    await call.write(request)
                    written += 1

            writer = asyncio.create_task(write())
            await asyncio.sleep(3.0)
            stats = await client.get_inference_statistics("echo", as_json=True)
            computed = int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))
            assert isinstance(await _lookup(client, 3), np.ndarray)  # others are served
            writer.cancel()
            call.cancel()
        assert written < 400  # the client was held back
        assert computed <= 64, computed  # a window's worth, plus answers the transport took
    finally:
        await client.close()
        stop_server(own)
