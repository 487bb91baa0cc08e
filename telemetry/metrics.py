"""Prometheus metrics on their own port (`--metrics-port`, default 8002, path /metrics).

Library: prometheus-client. It writes the Prometheus text format and serves it from a small
thread of its own, and it lets Ferry emit Triton's counter names exactly as Triton does (no
`_total` suffix), so existing dashboards keep working. The OpenTelemetry Prometheus exporter would
rename metrics by OpenTelemetry's rules and add a translation layer for no gain here.

    Triton's counters, per model and version (reason for failures: REJECTED, CANCELED, BACKEND,
    OTHER): nv_inference_request_success, nv_inference_request_failure, nv_inference_count (rows),
    nv_inference_exec_count (batches), nv_inference_request_duration_us,
    nv_inference_queue_duration_us, nv_inference_compute_{input,infer,output}_duration_us, and the
    gauge nv_inference_pending_request_count.
    Ferry's histograms: ferry_request_latency_seconds, ferry_queue_seconds,
    ferry_compute_seconds (per request), ferry_batch_rows (per batch); gauges ferry_queue_depth
    per profile and ferry_instance_busy_ratio per instance (share of time since start spent
    running batches; ferry_instance_busy_seconds is the counter to take rates of).
    GPU memory and utilization come from NVML on GPU hosts (engines' GPU work; none here).

Counters are plain integers updated on the event loop; the scrape thread reads them (a read of a
Python int is atomic under the GIL). The current state (queues, instances) is read at scrape time.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.errors import (
    DeadlineExceeded,
    EngineError,
    FerryError,
    QueueFull,
    QueueTimeout,
    RequestCancelled,
    ShuttingDown,
)
from scheduler.observer import BatchRecord
from scheduler.request import InferenceResult

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)

_COUNTERS = {
    "nv_inference_request_success": "Successful inference requests",
    "nv_inference_request_failure": "Failed inference requests (label reason)",
    "nv_inference_count": "Rows inferred (a batch of n counts n)",
    "nv_inference_exec_count": "Batch executions",
    "nv_inference_request_duration_us": "Cumulative request duration, microseconds",
    "nv_inference_queue_duration_us": "Cumulative queue duration, microseconds",
    "nv_inference_compute_input_duration_us": "Cumulative compute input duration, microseconds",
    "nv_inference_compute_infer_duration_us": "Cumulative compute infer duration, microseconds",
    "nv_inference_compute_output_duration_us": "Cumulative compute output duration, microseconds",
}


def failure_reason(error: BaseException) -> str:
    """Triton's failure reasons: REJECTED (refused by a queue), CANCELED, BACKEND, OTHER."""
    if isinstance(error, QueueFull | QueueTimeout | ShuttingDown):
        return "REJECTED"
    if isinstance(error, RequestCancelled | DeadlineExceeded):
        return "CANCELED"
    if isinstance(error, EngineError):
        return "BACKEND"
    if isinstance(error, FerryError):
        return "OTHER"
    return "CANCELED" if type(error).__name__ == "CancelledError" else "OTHER"


StateReader = Callable[[], Iterable[tuple[str, str, dict[int, int], dict[str, int], float]]]
"""Yields (model, version, queue depth per profile, busy ns per instance, seconds served)."""


class Metrics(Collector):
    def __init__(self, state: StateReader | None = None) -> None:
        self.registry = CollectorRegistry()
        self._counts: dict[str, dict[tuple[str, ...], float]] = {
            name: defaultdict(float) for name in _COUNTERS
        }
        self._state = state
        self._started = time.monotonic()
        self.latency = Histogram(
            "ferry_request_latency_seconds",
            "Request latency in the server",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue = Histogram(
            "ferry_queue_seconds",
            "Time requests waited in the queue",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compute = Histogram(
            "ferry_compute_seconds",
            "Compute time of each request's batch",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "ferry_batch_rows",
            "Rows per batch execution",
            ["model", "version"],
            buckets=ROWS_BUCKETS,
            registry=self.registry,
        )
        self._by_model: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self.registry.register(self)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # ---- updates, on the event loop -------------------------------------------------------

    def request_done(
        self,
        model: str,
        version: str,
        total_ns: int,
        result: InferenceResult | None,
        error: BaseException | None,
    ) -> None:
        key = (model, version)
        counts = self._counts
        latency, queue, compute = self._children(key)
        latency.observe(total_ns / 1e9)
        counts["nv_inference_request_duration_us"][key] += total_ns / 1e3
        if error is not None or result is None:
            reason = failure_reason(error) if error is not None else "OTHER"
            counts["nv_inference_request_failure"][(model, version, reason)] += 1
            return
        counts["nv_inference_request_success"][key] += 1
        counts["nv_inference_queue_duration_us"][key] += result.queue_ns / 1e3
        t = result.timings
        counts["nv_inference_compute_input_duration_us"][key] += t.input_ns / 1e3
        counts["nv_inference_compute_infer_duration_us"][key] += t.infer_ns / 1e3
        counts["nv_inference_compute_output_duration_us"][key] += t.output_ns / 1e3
        queue.observe(result.queue_ns / 1e9)
        compute.observe(max(result.finished_ns - result.started_ns, 0) / 1e9)

    def _children(self, key: tuple[str, str]) -> tuple[Any, Any, Any]:
        """The per-model histogram children, looked up once (labels() takes a lock)."""
        found = self._by_model.get(key)
        if found is None:
            found = self._by_model[key] = (
                self.latency.labels(*key),
                self.queue.labels(*key),
                self.compute.labels(*key),
            )
        return found

    def batch_done(self, record: BatchRecord) -> None:
        if record.error is not None:
            return
        model, _, version = record.model.partition(":")
        key = (model, version)
        self._counts["nv_inference_count"][key] += record.rows
        self._counts["nv_inference_exec_count"][key] += 1
        self.batch_rows.labels(model, version).observe(record.rows)

    # ---- scrape, on the HTTP thread -------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        for name, doc in _COUNTERS.items():
            labels = (
                ["model", "version", "reason"] if name.endswith("failure") else ["model", "version"]
            )
            metric = Metric(name, doc, "counter")
            for values, count in list(self._counts[name].items()):
                metric.add_sample(name, dict(zip(labels, values, strict=True)), count)
            yield metric
        if self._state is None:
            return
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Requests waiting in queues",
            labels=["model", "version"],
        )
        depth = GaugeMetricFamily(
            "ferry_queue_depth",
            "Requests waiting, per profile",
            labels=["model", "version", "profile"],
        )
        busy = GaugeMetricFamily(
            "ferry_instance_busy_ratio",
            "Share of time since start each instance ran batches",
            labels=["model", "version", "instance"],
        )
        busy_s = Metric(
            "ferry_instance_busy_seconds", "Seconds each instance ran batches", "counter"
        )
        for model, version, depths, busy_ns, uptime_s in self._state():
            pending.add_metric([model, version], sum(depths.values()))
            for profile, waiting in depths.items():
                depth.add_metric([model, version, str(profile)], waiting)
            for instance, ns in busy_ns.items():
                busy.add_metric([model, version, instance], ns / 1e9 / max(uptime_s, 1e-9))
                busy_s.add_sample(
                    "ferry_instance_busy_seconds",
                    {"model": model, "version": version, "instance": instance},
                    ns / 1e9,
                )
        yield pending
        yield depth
        yield busy
        yield busy_s

    # ---- the HTTP endpoint ------------------------------------------------------------------

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics from a daemon thread; returns the bound port (port 0 picks one)."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
