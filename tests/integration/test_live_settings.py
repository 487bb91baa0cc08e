"""TraceSetting and LogSettings, over gRPC and HTTP, change tracing and logging at once: the next
request is traced (or not) as set, for one model or all, and the `ferry` loggers' level follows."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ferry.proto import grpc_service_pb2 as pb
from ferry.proto import grpc_service_pb2_grpc as pb_grpc
from ferry.server.app import FerryServer
from ferry.server.config import ServerConfig
from tests.conftest import RunningServer


@pytest_asyncio.fixture
async def traced(
    model_repo: Path,
) -> AsyncIterator[tuple[pb_grpc.GRPCInferenceServiceStub, InMemorySpanExporter, str]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = ServerConfig(
        model_repo, grpc_port=0, http_port=0, metrics_port=-1, strict_readiness=False
    )
    server = FerryServer(config, tracer_provider=provider)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.tcp_port}") as channel:
            yield (pb_grpc.GRPCInferenceServiceStub(channel), exporter,
                   f"http://127.0.0.1:{server.http_port}")  # fmt: skip
    finally:
        await server.stop(0)
        logging.getLogger("ferry").setLevel(logging.NOTSET)


def echo(model: str = "echo") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    return request


def simple() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        request.raw_input_contents.append(np.ones((1, 16), np.int32).tobytes())
    return request


def call(url: str, body: bytes | None = None) -> tuple[int, Any]:
    """A blocking HTTP call (run in a thread: the server shares the test's event loop)."""
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status), json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def setting(model: str = "", **values: list[str]) -> pb.TraceSettingRequest:
    request = pb.TraceSettingRequest(model_name=model)
    for key, value in values.items():
        request.settings[key].value.extend(value)
    return request


async def traced_models(stub: Any, exporter: InMemorySpanExporter) -> set[str]:
    exporter.clear()
    await stub.ModelInfer(echo())
    await stub.ModelInfer(simple())
    return {str(s.attributes["ferry.model"]) for s in exporter.get_finished_spans()
            if s.name == "ModelInfer"}  # fmt: skip


@pytest.mark.asyncio
async def test_tracing_turns_off_and_on_for_all_or_one_model(traced: Any) -> None:
    stub, exporter, _ = traced
    assert await traced_models(stub, exporter) == {"echo", "simple"}
    reply = await stub.TraceSetting(setting(trace_level=["OFF"]))
    assert list(reply.settings["trace_level"].value) == ["OFF"]
    assert await traced_models(stub, exporter) == set()
    await stub.TraceSetting(setting("echo", trace_level=["TIMESTAMPS"]))
    assert await traced_models(stub, exporter) == {"echo"}
    reply = await stub.TraceSetting(setting("echo", trace_level=[]))  # back to the server's
    assert list(reply.settings["trace_level"].value) == ["OFF"]
    assert await traced_models(stub, exporter) == set()
    await stub.TraceSetting(setting(trace_level=["TIMESTAMPS"], trace_rate=["1"]))
    assert await traced_models(stub, exporter) == {"echo", "simple"}


@pytest.mark.asyncio
async def test_a_trace_rate_of_n_traces_about_one_in_n(traced: Any) -> None:
    stub, exporter, _ = traced
    reply = await stub.TraceSetting(setting("echo", trace_rate=["4"]))
    assert list(reply.settings["trace_rate"].value) == ["4"]
    exporter.clear()
    for _ in range(400):
        await stub.ModelInfer(echo())
    spans = [s for s in exporter.get_finished_spans() if s.name == "ModelInfer"]
    assert 60 <= len(spans) <= 140  # 100 expected; far outside this is not one in four


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (setting(trace_level=["LOUD"]), grpc.StatusCode.INVALID_ARGUMENT, "OFF, or TIMESTAMPS"),
        (setting(trace_rate=["0"]), grpc.StatusCode.INVALID_ARGUMENT, "one integer >= 1"),
        (setting(trace_file=["/tmp/x"]), grpc.StatusCode.INVALID_ARGUMENT, "cannot be changed"),
        (setting(colour=["red"]), grpc.StatusCode.INVALID_ARGUMENT, "unknown trace setting"),
        (setting("no_such_model", trace_rate=["2"]), grpc.StatusCode.NOT_FOUND,
         "Request for unknown model"),
    ],
)
async def test_bad_trace_settings_are_refused(
    traced: Any, request_: pb.TraceSettingRequest, code: grpc.StatusCode, message: str
) -> None:
    stub, _, _ = traced
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.TraceSetting(request_)
    assert info.value.code() == code and message in str(info.value.details())


@pytest.mark.asyncio
async def test_log_settings_set_the_ferry_loggers_level(traced: Any) -> None:
    stub, _, http = traced
    request = pb.LogSettingsRequest()
    request.settings["log_verbose_level"].uint32_param = 1
    reply = await stub.LogSettings(request)
    assert reply.settings["log_verbose_level"].uint32_param == 1
    assert logging.getLogger("ferry").getEffectiveLevel() == logging.DEBUG
    body = json.dumps({"log_verbose_level": 0, "log_info": False}).encode()
    status, settings = await asyncio.to_thread(call, http + "/v2/logging", body)
    assert status == 200 and settings["log_info"] is False and settings["log_warning"] is True
    assert logging.getLogger("ferry").getEffectiveLevel() == logging.WARNING
    bad = pb.LogSettingsRequest()
    bad.settings["log_file"].string_param = "/tmp/ferry.log"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.LogSettings(bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.asyncio
async def test_trace_settings_over_http(traced: Any) -> None:
    _, _, http = traced
    status, settings = await asyncio.to_thread(call, http + "/v2/trace/setting")
    assert status == 200 and settings["trace_level"] == ["TIMESTAMPS"]
    body = json.dumps({"trace_rate": "10"}).encode()
    status, settings = await asyncio.to_thread(call, http + "/v2/models/echo/trace/setting", body)
    assert status == 200 and settings["trace_rate"] == "10"
    body = b'{"trace_level": ["LOUD"]}'
    status, settings = await asyncio.to_thread(call, http + "/v2/trace/setting", body)
    assert status == 400 and "OFF, or TIMESTAMPS" in settings["error"]


def test_without_an_exporter_tracing_cannot_be_turned_on(server: RunningServer) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.address))
    reply = stub.TraceSetting(setting())
    assert list(reply.settings["trace_level"].value) == ["OFF"]
    with pytest.raises(grpc.RpcError) as info:
        stub.TraceSetting(setting(trace_level=["TIMESTAMPS"]))
    assert "start it with --tracing" in str(info.value.details())


@pytest.mark.asyncio
async def test_an_http_request_joins_the_callers_trace(traced: Any) -> None:
    """W3C `traceparent` on an HTTP request, as on gRPC metadata: the server span continues
    the caller's trace."""
    _, exporter, http = traced
    exporter.clear()
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2],
                                   "data": [1, 2]}]}).encode()  # fmt: skip

    def send() -> int:
        request = urllib.request.Request(
            http + "/v2/models/echo/infer",
            data=body,
            headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)

    assert await asyncio.to_thread(send) == 200
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "HTTP infer"]
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None and format(span.parent.span_id, "016x") == parent_id
