"""What tracing costs: requests/s and p99 with tracing off, at ratio 0.01 and at 1.0,
against the same server without any tracing code (git tag `pre-telemetry`, run from a worktree).

    python -m bench.tracing [--rounds 3] [--seconds 4] [--baseline-ref pre-telemetry]

Variants (one server each, `dlrm`, 64-row requests, closed loop at concurrency 64):
    no tracing code   the commit before tracing, metrics and the access log existed
    off               this tree, no exporter (metrics off, so tracing is the only difference)
    off + metrics     this tree, no exporter, Prometheus metrics on
    ratio 0.01        OTLP/gRPC export of 1% of requests to a receiver in this process
    ratio 1.0         every request traced and exported
    ratio 0           (only with --variants) the OTLP/gRPC exporter present, nothing sampled
    ratio 0.01 http   (only with --variants) OTLP/HTTP export of 1% of requests
Rounds visit the variants in turn; each prints its ratio against `no tracing code` of the round.

End to end on 2 noisy cores the spread between rounds is wider than a few percent, so the script
also measures the cost directly: the CPU time the request path spends in tracing (span start and
end, one span per request, in this process) against the server's own CPU per request (from
/proc, the `off` variant), a ratio that noise barely moves.
"""

from __future__ import annotations

import argparse
import http.server
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from bench.harness import ROOT, process_cpu_s, record, start, stop
from ferry.engines.base import Timings
from ferry.loadtest.processes import Plan, run
from ferry.loadtest.report import result_of
from ferry.loadtest.workload import Choice, Workload
from ferry.scheduler.request import InferenceResult
from ferry.server.example_repo import write_example_repo
from ferry.telemetry.tracing import Tracing, TracingConfig, make_provider


class Sink(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """An OTLP receiver that accepts and counts spans."""

    def __init__(self) -> None:
        self.spans = 0

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def measure(address: str, seconds: float, pid: int) -> dict[str, Any]:
    workload = Workload("dlrm", rows=Choice((64,), (1.0,)), id_range=1000)
    plan = Plan(address, workload, "closed", concurrency=64, duration_s=seconds, warmup_s=0.5)
    cpu0 = process_cpu_s(pid)
    tally = run(plan)
    cpu = process_cpu_s(pid) - cpu0
    result = result_of(tally, model="dlrm", mode="closed", duration_s=seconds, concurrency=64)
    requests = result.requests_per_s * (seconds + 0.5)  # the CPU spans the warm-up too
    return {
        "requests_per_s": result.requests_per_s,
        "latency_ms": result.latency_ms,
        "server_cpu_us_per_request": cpu * 1e6 / max(requests, 1.0),
    }


def tracing_cpu_us(ratio: float, n: int = 50_000) -> float:
    """CPU microseconds per request that the request path spends on tracing at `ratio`."""
    tracing = Tracing(make_provider(TracingConfig("console", ratio), exporter=_Discard()), ratio)
    result = InferenceResult({}, 1_000, Timings(), 64, 7, 2_000, 3_000)
    start = time.process_time()
    for _ in range(n):
        span = tracing.start_request("ModelInfer", (), "dlrm", "", "")
        if span is not None:
            span.get_span_context()
            tracing.end_request(span, result, 1_000, None, "OK")  # with queue/compute spans
    return (time.process_time() - start) / n * 1e6


class _HttpSink(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that accepts every POST (spans are not counted)."""

    posts = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _HttpSink.posts += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None

    @classmethod
    def start(cls) -> _HttpServer:
        server = _HttpServer(("127.0.0.1", 0), cls)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


class _HttpServer(http.server.ThreadingHTTPServer):
    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Discard(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--baseline-ref", default="pre-telemetry")
    parser.add_argument(
        "--variants",
        help="comma-separated subset to run (always with 'no tracing code' and 'off'), e.g. "
        "'ratio 0.01,ratio 0,ratio 0.01 http'",
    )
    parser.add_argument(
        "--baseline-dir",
        type=Path,
        help="a checkout of the baseline instead of a git worktree (machines without .git)",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ferry-tracing-"))
    repo = work / "models"
    write_example_repo(repo)
    baseline_tree = args.baseline_dir.resolve() if args.baseline_dir else work / "baseline"
    if not args.baseline_dir:
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(baseline_tree), args.baseline_ref],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    sink = Sink()
    receiver = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, receiver)
    otlp_port = receiver.add_insecure_port("127.0.0.1:0")
    receiver.start()
    http_sink = _HttpSink.start()
    serve = [sys.executable, "-m", "ferry", "serve", "--model-repository", str(repo)]
    serve += ["--grpc-port", "0"]
    environment = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    }
    variants = {
        "no tracing code": (serve, baseline_tree),
        "off": ([*serve, "--metrics-port", "-1", "--tracing", "none"], ROOT),
        "off + metrics": ([*serve, "--metrics-port", "0", "--tracing", "none"], ROOT),
        "ratio 0.01": (
            [*serve, "--metrics-port", "-1", "--tracing", "otlp", "--trace-ratio", "0.01"],
            ROOT,
        ),
        "ratio 1.0": (
            [*serve, "--metrics-port", "-1", "--tracing", "otlp", "--trace-ratio", "1"],
            ROOT,
        ),
    }
    extra = {
        "ratio 0": (
            [*serve, "--metrics-port", "-1", "--tracing", "otlp", "--trace-ratio", "0"],
            ROOT,
        ),
        "ratio 0.01 http": (
            [*serve, "--metrics-port", "-1", "--tracing", "otlp", "--trace-ratio", "0.01"],
            ROOT,
        ),
    }
    if args.variants:
        wanted = [v.strip() for v in args.variants.split(",")]
        known = {**variants, **extra}
        unknown = [v for v in wanted if v not in known]
        if unknown:
            parser.error(f"unknown variants {unknown}; known: {sorted(known)}")
        variants = {n: known[n] for n in ("no tracing code", "off", *wanted)}
    http_environment = {
        **environment,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{http_sink.port}",
    }
    servers: dict[str, tuple[Any, str]] = {}
    rounds: list[dict[str, Any]] = []
    try:
        for name, (command, cwd) in variants.items():
            log = work / f"{name.replace(' ', '_')}.log"
            env = http_environment if name.endswith("http") else environment
            servers[name] = start(command, log, cwd=cwd, env=env)
        for _ in range(args.rounds):
            # Each round starts one variant later, so no variant always runs first or last.
            names = list(servers)
            shift = len(rounds) % len(names)
            order = names[shift:] + names[:shift]
            rounds.append(
                {
                    name: measure(servers[name][1], args.seconds, servers[name][0].pid)
                    for name in order
                }
            )
    finally:
        for process, _ in servers.values():
            stop(process)
        receiver.stop(0)
        http_sink.stop()
        if not args.baseline_dir:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(baseline_tree)], cwd=ROOT, check=False
            )

    print(f"dlrm, 64 rows/request, concurrency 64; spans received by the OTLP sink: {sink.spans}")
    print(
        f"{'variant':<16} {'requests/s':>11} {'x no tracing code':>22} {'p99 ms':>8} {'x p99':>6}"
    )
    summary = {}
    for name in variants:
        ratios = [
            r[name]["requests_per_s"] / r["no tracing code"]["requests_per_s"] for r in rounds
        ]
        p99s = [
            r[name]["latency_ms"]["p99"] / r["no tracing code"]["latency_ms"]["p99"] for r in rounds
        ]
        rate = float(np.median([r[name]["requests_per_s"] for r in rounds]))
        p99 = float(np.median([r[name]["latency_ms"]["p99"] for r in rounds]))
        summary[name] = {"requests_per_s": rate, "ratio": ratios, "p99_ms": p99, "p99_ratio": p99s}
        spread = f"{np.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
        print(f"{name:<16} {rate:>11.0f} {spread:>22} {p99:>8.2f} {np.median(p99s):>6.2f}")
    server_us = float(np.median([r["off"]["server_cpu_us_per_request"] for r in rounds]))
    direct = {str(ratio): tracing_cpu_us(ratio) for ratio in (0.01, 1.0)}
    print(f"server CPU per request with tracing off: {server_us:.0f} us (median of rounds)")
    for ratio, cost in direct.items():
        print(
            f"tracing at ratio {ratio}: {cost:.1f} us of CPU per request = {cost / server_us:.2%}"
        )
    path = record(
        "tracing",
        vars(args),
        {
            "rounds": rounds,
            "summary": summary,
            "spans_received": sink.spans,
            "server_cpu_us_per_request_off": server_us,
            "tracing_cpu_us_per_request": direct,
        },
    )
    print(f"full results: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
