"""Observability through the real server: spans (in memory and over real OTLP), Prometheus
metrics and ModelStatistics equal to the traffic sent, provenance, and the access log."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from tritonclient.utils import InferenceServerException

from ferry.proto import grpc_service_pb2 as pb
from ferry.proto import grpc_service_pb2_grpc as pb_grpc
from ferry.server.app import FerryServer
from ferry.server.config import ServerConfig
from tests.conftest import RunningServer, start_server, stop_server
from tests.prometheus_text import samples

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def add_request(rows: int, request_id: str, model: str = "delayed") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="x", datatype="FP32", shape=[rows, 4])
    request.raw_input_contents.append(np.ones((rows, 4), np.float32).tobytes())
    return request


@pytest.mark.asyncio
async def test_a_shared_batch_is_one_span_linked_to_every_request(model_repo: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = ServerConfig(model_repo, grpc_port=0, metrics_port=-1, strict_readiness=False)
    server = FerryServer(config, tracer_provider=provider)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.tcp_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            traced = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
            # `delayed` waits 300 ms for company: the three requests share one batch.
            await asyncio.gather(
                stub.ModelInfer(add_request(1, "a"), metadata=traced),
                stub.ModelInfer(add_request(1, "b")),
                stub.ModelInfer(add_request(2, "c")),
            )
    finally:
        await server.stop(0)
    spans = exporter.get_finished_spans()
    requests = {s.attributes["ferry.request_id"]: s for s in spans if s.name == "ModelInfer"}
    assert set(requests) == {"a", "b", "c"}
    assert all(s.kind == SpanKind.SERVER for s in requests.values())
    joined = requests["a"]  # continues the caller's trace
    assert format(joined.context.trace_id, "032x") == TRACE_ID
    assert joined.parent is not None and format(joined.parent.span_id, "016x") == PARENT_ID
    (batch,) = [s for s in spans if s.name == "batch"]
    linked = {(link.context.trace_id, link.context.span_id) for link in batch.links}
    assert linked == {(s.context.trace_id, s.context.span_id) for s in requests.values()}
    attributes = batch.attributes
    assert attributes["ferry.model"] == "delayed" and attributes["ferry.version"] == "1"
    assert attributes["ferry.rows"] == 4 and attributes["ferry.requests"] == 3
    assert attributes["ferry.profile"] == 0 and attributes["ferry.device"] == "cpu"
    assert attributes["ferry.padding_ratio"] == 0.0 and "ferry.instance" in attributes
    for name in ("queue", "compute"):
        children = [s for s in spans if s.name == name]
        assert {c.parent.span_id for c in children if c.parent} == {
            s.context.span_id for s in requests.values()
        }
    compute = [s for s in spans if s.name == "compute"]
    assert all(c.attributes["ferry.batch_id"] == attributes["ferry.batch_id"] for c in compute)


class Collector(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """An OTLP receiver for both transports: gRPC (Export) and HTTP (POST /v1/traces)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def take(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.names.extend(span.name for span in scope.spans)

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        self.take(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture(params=["grpc", "http/protobuf"])
def otlp_receiver(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, Collector]]:
    collector = Collector()
    if request.param == "grpc":
        receiver = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)
        port = receiver.add_insecure_port("127.0.0.1:0")
        receiver.start()
        yield request.param, f"http://127.0.0.1:{port}", collector
        receiver.stop(0)
        return

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/v1/traces":
                collector.take(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
            answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            return None

    http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=http_server.serve_forever, daemon=True)
    thread.start()
    yield request.param, f"http://127.0.0.1:{http_server.server_port}", collector
    http_server.shutdown()
    http_server.server_close()


def test_spans_arrive_at_a_real_otlp_receiver(
    model_repo: Path, tmp_path: Path, otlp_receiver: tuple[str, str, Collector]
) -> None:
    protocol, endpoint, collector = otlp_receiver
    environment = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    saved = {k: os.environ.get(k) for k in environment}
    os.environ.update(environment)
    try:
        server = start_server(model_repo, tmp_path)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        client = tc.InferenceServerClient(server.address)
        x = tc.InferInput("x", [2, 4], "FP32")
        x.set_data_from_numpy(np.ones((2, 4), np.float32))
        client.infer("versioned", [x])
        deadline = time.monotonic() + 15
        while "batch" not in collector.names and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop_server(server)
    assert {"ModelInfer", "queue", "compute", "batch"} <= set(collector.names)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return samples(urllib.request.urlopen(url, timeout=10).read().decode())


def test_metrics_and_statistics_equal_the_traffic(server: RunningServer) -> None:
    client = tc.InferenceServerClient(server.address)

    def inputs(rows: int, width: int = 4) -> list[tc.InferInput]:
        x = tc.InferInput("x", [rows, width], "FP32")
        x.set_data_from_numpy(np.ones((rows, width), np.float32))
        return [x]

    for _ in range(3):  # full batches leave at once
        client.infer("metered", inputs(8))
    failures = {"REJECTED": 2, "OTHER": 2, "CANCELED": 1}
    for _ in range(failures["REJECTED"]):  # a lone row times out in the queue after 50 ms
        with pytest.raises(InferenceServerException, match="Request timeout expired"):
            client.infer("metered", inputs(1))
    for _ in range(failures["OTHER"]):  # wrong width: refused by validation
        with pytest.raises(InferenceServerException, match="does not match"):
            client.infer("metered", inputs(1, width=5))
    with pytest.raises(InferenceServerException, match=r"(?i)deadline"):  # 10 ms deadline
        client.infer("metered", inputs(1), client_timeout=0.01)
    time.sleep(0.3)  # let the server notice the cancelled call

    stats = client.get_inference_statistics("metered", as_json=False).model_stats[0]
    assert stats.inference_stats.success.count == 3
    assert stats.inference_stats.fail.count == 5
    assert stats.inference_stats.queue.count == 3
    assert stats.inference_stats.compute_infer.count == 3
    assert stats.inference_count == 24 and stats.execution_count == 3
    assert [(b.batch_size, b.compute_infer.count) for b in stats.batch_stats] == [(8, 3)]
    assert stats.last_inference > 0

    metrics = scrape(server.metrics_url)
    labels = (("model", "metered"), ("version", "1"))

    def metric(name: str, *extra: tuple[str, str]) -> float:
        return metrics[(name, tuple(sorted(labels + extra)))]

    assert metric("nv_inference_request_success") == 3
    for reason, count in failures.items():
        assert metric("nv_inference_request_failure", ("reason", reason)) == count
    assert metric("nv_inference_count") == 24
    assert metric("nv_inference_exec_count") == 3
    assert metric("ferry_request_latency_seconds_count") == 8  # every request, failed or not
    assert metric("ferry_queue_seconds_count") == 3
    assert metric("ferry_batch_rows_count") == 3
    assert metric("ferry_batch_rows_sum") == 24  # = rows inferred
    assert metric("nv_inference_pending_request_count") == 0
    assert metric("ferry_queue_depth", ("profile", "0")) == 0
    assert metric("nv_inference_queue_duration_us") > 0
    busy = [v for (name, _), v in metrics.items() if name == "ferry_instance_busy_ratio"]
    assert busy and all(0.0 <= v <= 1.0 for v in busy)


def test_every_answer_names_its_artifact_and_is_access_logged(
    server: RunningServer, model_repo: Path
) -> None:
    client = tc.InferenceServerClient(server.address)
    x = tc.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.zeros((1, 4), np.float32))
    result = client.infer("versioned", [x], model_version="2", request_id="provenance-1")
    parameters = result.get_response().parameters
    digest = hashlib.sha256((model_repo / "versioned" / "2" / "model.onnx").read_bytes())
    assert parameters["model_sha256"].string_param == digest.hexdigest()
    assert parameters["model_version"].string_param == "2"
    log = server.log_path.parent / "access.log"
    deadline = time.monotonic() + 5
    entry = None
    while entry is None and time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            candidate = json.loads(line)
            if candidate["id"] == "provenance-1":
                entry = candidate
        time.sleep(0.05)
    assert entry is not None
    assert entry["model"] == "versioned" and entry["version"] == "2"
    assert entry["sha256"] == digest.hexdigest() and entry["status"] == "OK"
    assert entry["rows"] == 1 and entry["batch"] >= 0
    assert entry["total_us"] >= entry["queue_us"] >= 0 and entry["compute_us"] >= 0


def test_no_per_request_log_line_at_the_default_level(server: RunningServer) -> None:
    before = server.log().count("\n")
    client = tc.InferenceServerClient(server.address)
    x = tc.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.zeros((1, 4), np.float32))
    for _ in range(20):
        client.infer("versioned", [x])
    assert server.log().count("\n") == before
