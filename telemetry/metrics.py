"""Prometheus metrics on their own port (`--metrics-port`, default 8002, path /metrics).

Ferry's families are written by telemetry/exposition.py (and the histograms by
telemetry/histogram.py), with Triton's counter names exactly as Triton writes them (no `_total`
suffix, and typed under those names), so existing dashboards keep working; prometheus-client
holds the registry of any other collector (GPUs) and writes those. The OpenTelemetry Prometheus
exporter would rename metrics by OpenTelemetry's rules and add a translation layer for no gain
here.

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

Counters are plain numbers and histograms plain lists (telemetry/histogram.py), updated on the
event loop without locks; the scrape thread reads them (a read of a Python number, a copy of a
list, is atomic under the GIL). The current state (queues, instances) is read at scrape time.
A scrape (`exposition`) is the histograms' text, then Ferry's other families, both written
without prometheus-client (a scrape holds the GIL, and with it the event loop, for as long as it
writes), then any other collector of the registry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ferry.common.errors import (
    DeadlineExceeded,
    EngineError,
    FerryError,
    Overloaded,
    QueueFull,
    QueueTimeout,
    ShuttingDown,
)
from ferry.scheduler.observer import BatchRecord
from ferry.scheduler.request import InferenceResult
from ferry.scheduler.slo import Decision
from ferry.telemetry.endpoint import MetricsEndpoint, Probe
from ferry.telemetry.exposition import Exposition, Family, Labels
from ferry.telemetry.histogram import Histogram, HistogramFamily

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

_COUNTERS = (  # (Triton's name, the _ModelMetrics field, help)
    ("nv_inference_request_success", "success", "Successful inference requests"),
    ("nv_inference_count", "rows", "Rows inferred (a batch of n counts n)"),
    ("nv_inference_exec_count", "executions", "Batch executions"),
    ("nv_inference_request_duration_us", "request_us", "Cumulative request duration, microseconds"),
    ("nv_inference_queue_duration_us", "queue_us", "Cumulative queue duration, microseconds"),
    (
        "nv_inference_compute_input_duration_us",
        "input_us",
        "Cumulative compute input duration, microseconds",
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "infer_us",
        "Cumulative compute infer duration, microseconds",
    ),
    (
        "nv_inference_compute_output_duration_us",
        "output_us",
        "Cumulative compute output duration, microseconds",
    ),
    (
        "ferry_isolated_batches_total",
        "isolated_batches",
        "Failed batches of several requests, run again in parts to find the request(s) at fault",
    ),
    ("ferry_isolated_culprits_total", "culprits", "Requests that failed when run on their own"),
)
_FAILURES = ("nv_inference_request_failure", "Failed inference requests (label reason)")


class _ModelMetrics:
    """One model version's counters and histograms: plain fields that the request path updates
    with attribute additions (looked up once per request, by (model, version))."""

    __slots__ = (
        "batch_rows",
        "compute",
        "culprits",
        "executions",
        "failures",
        "infer_us",
        "input_us",
        "isolated_batches",
        "latency",
        "output_us",
        "queue",
        "queue_us",
        "request_us",
        "rows",
        "slo",
        "slo_refused",
        "success",
    )

    def __init__(self, histograms: tuple[Histogram, Histogram, Histogram, Histogram]) -> None:
        self.success = self.rows = self.executions = 0
        self.isolated_batches = self.culprits = 0
        self.request_us = self.queue_us = self.input_us = self.infer_us = self.output_us = 0.0
        self.failures: dict[str, int] = {}
        self.slo_refused: dict[str, int] = {}  # by reason: budget, deadline
        self.slo: dict[int, Decision] = {}  # the latency controller's last settings, by profile
        self.latency, self.queue, self.compute, self.batch_rows = histograms


def failure_reason(error: BaseException) -> str:
    """Triton's failure reasons: REJECTED (refused by a queue, or early by the latency
    controller), CANCELED, BACKEND, OTHER."""
    if isinstance(error, QueueFull | QueueTimeout | ShuttingDown | Overloaded):
        return "REJECTED"
    if isinstance(error, DeadlineExceeded | asyncio.CancelledError):
        return "CANCELED"
    if isinstance(error, EngineError):
        return "BACKEND"
    if isinstance(error, FerryError):
        return "OTHER"
    return "OTHER"


StateReader = Callable[[], Iterable[tuple[str, str, dict[int, int], dict[str, int], float]]]
ProcessReader = Callable[[], dict[str, tuple[str, float]]]
"""The process's own gauges at scrape time: name -> (help, value)."""
"""Yields (model, version, queue depth per profile, busy ns per instance, seconds served)."""


_SLO_GAUGES = (
    ("ferry_slo_queue_delay_seconds", "delay_s", "Queue delay the latency controller chose"),
    ("ferry_slo_batch_rows_cap", "cap_rows", "Batch row cap the latency controller chose"),
    ("ferry_slo_predicted_p99_seconds", "predicted_p99_s", "Predicted latency in a full batch"),
    ("ferry_slo_observed_p99_seconds", "observed_p99_s", "p99 over the last second's answers"),
    ("ferry_slo_safety", "safety", "Share of the budget a request may take"),
)


def _slo_families(models: list[tuple[Labels, _ModelMetrics]]) -> Iterator[Family]:
    """The latency controller's settings per profile, and its refusals by reason."""
    for name, field, doc in _SLO_GAUGES:
        samples = [
            (name, (*key, ("profile", str(profile))), getattr(decision, field))
            for key, m in models
            for profile, decision in list(m.slo.items())
        ]
        yield Family(name, doc, "gauge", samples)
    name = "ferry_slo_refused_total"
    refused = [
        (name, (*key, ("reason", reason)), count)
        for key, m in models
        for reason, count in list(m.slo_refused.items())
    ]
    yield Family(name, "Requests refused at arrival by the latency controller", "counter", refused)


class _AsLibrary(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for histogram in self._metrics.histograms:
            yield histogram.collect()
        for family in self._metrics.families():
            metric = Metric(family.name, family.documentation, family.kind)
            for name, labels, value in family.samples:
                metric.add_sample(name, dict(labels), value)
            yield metric


class Metrics:
    def __init__(
        self, state: StateReader | None = None, process: ProcessReader | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        self._state = state
        self._process = process
        labels = ("model", "version")
        self.latency = HistogramFamily(
            "ferry_request_latency_seconds",
            "Request latency in the server",
            labels,
            LATENCY_BUCKETS,
        )
        self.queue = HistogramFamily(
            "ferry_queue_seconds", "Time requests waited in the queue", labels, LATENCY_BUCKETS
        )
        self.compute = HistogramFamily(
            "ferry_compute_seconds", "Compute time of each request's batch", labels, LATENCY_BUCKETS
        )
        self.batch_rows = HistogramFamily(
            "ferry_batch_rows", "Rows per batch execution", labels, ROWS_BUCKETS
        )
        self.histograms = (self.latency, self.queue, self.compute, self.batch_rows)
        self._writer = Exposition()
        self._by_model: dict[tuple[str, str], _ModelMetrics] = {}
        self._by_record: dict[str, _ModelMetrics] = {}  # by BatchRecord.model, "name:version"
        self._endpoint: MetricsEndpoint | None = None

    # ---- updates, on the event loop -------------------------------------------------------

    def request_done(
        self,
        model: str,
        version: str,
        total_ns: int,
        result: InferenceResult | None,
        error: BaseException | None,
    ) -> None:
        m = self._model((model, version))
        m.latency.observe(total_ns / 1e9)
        m.request_us += total_ns / 1e3
        if error is not None or result is None:
            reason = failure_reason(error) if error is not None else "OTHER"
            m.failures[reason] = m.failures.get(reason, 0) + 1
            if isinstance(error, Overloaded):
                m.slo_refused[error.reason] = m.slo_refused.get(error.reason, 0) + 1
            return
        m.success += 1
        m.queue_us += result.queue_ns / 1e3
        t = result.timings
        m.input_us += t.input_ns / 1e3
        m.infer_us += t.infer_ns / 1e3
        m.output_us += t.output_ns / 1e3
        m.queue.observe(result.queue_ns / 1e9)
        m.compute.observe(max(result.finished_ns - result.started_ns, 0) / 1e9)

    def _model(self, key: tuple[str, str]) -> _ModelMetrics:
        found = self._by_model.get(key)
        if found is None:
            latency, queue, compute, rows = (h.child(*key) for h in self.histograms)
            found = self._by_model[key] = _ModelMetrics((latency, queue, compute, rows))
        return found

    def batch_done(self, record: BatchRecord) -> None:
        m = self._by_record.get(record.model)
        if m is None:
            m = self._by_record[record.model] = self._model(record.name_and_version)
        if record.error is not None:
            if record.isolation == "batch":
                m.isolated_batches += 1
            elif record.isolation == "culprit":
                m.culprits += 1
            return
        rows = record.rows
        m.rows += rows
        m.executions += 1
        m.batch_rows.observe(rows)
        if record.slo is not None:
            m.slo[record.profile] = record.slo

    # ---- scrape, on the HTTP thread -------------------------------------------------------

    def exposition(self) -> bytes:
        """What /metrics answers: Ferry's families in its own writer (telemetry/exposition.py),
        then any other collector of the registry (GPUs) in prometheus-client's."""
        text = "".join(histogram.exposition() for histogram in self.histograms)
        text += self._writer.write(self.families())
        return text.encode() + generate_latest(self.registry)

    def collector(self) -> Collector:
        """Everything `exposition` writes, as prometheus-client's objects: for its writer, a
        push gateway or a test. /metrics writes them itself, faster."""
        return _AsLibrary(self)

    def families(self) -> Iterator[Family]:
        """Ferry's counters and gauges as of now (the histograms write themselves)."""
        models: list[tuple[Labels, _ModelMetrics]] = [
            ((("model", model), ("version", version)), m)
            for (model, version), m in list(self._by_model.items())
        ]
        for name, field, doc in _COUNTERS:
            counts = [(name, key, float(getattr(m, field))) for key, m in models]
            yield Family(name, doc, "counter", counts)
        name, doc = _FAILURES
        yield Family(
            name,
            doc,
            "counter",
            [
                (name, (*key, ("reason", reason)), count)
                for key, m in models
                for reason, count in list(m.failures.items())
            ],
        )
        yield from _slo_families(models)
        if self._process is not None:
            for name, (doc, value) in self._process().items():
                yield Family(name, doc, "gauge", [(name, (), value)])
        if self._state is None:
            return
        pending: list[tuple[str, Labels, float]] = []
        depth: list[tuple[str, Labels, float]] = []
        busy: list[tuple[str, Labels, float]] = []
        busy_s: list[tuple[str, Labels, float]] = []
        for model, version, depths, busy_ns, uptime_s in self._state():
            key = (("model", model), ("version", version))
            pending.append(("nv_inference_pending_request_count", key, sum(depths.values())))
            for profile, waiting in depths.items():
                depth.append(("ferry_queue_depth", (*key, ("profile", str(profile))), waiting))
            for instance, ns in busy_ns.items():
                labels = (*key, ("instance", instance))
                busy.append(("ferry_instance_busy_ratio", labels, ns / 1e9 / max(uptime_s, 1e-9)))
                busy_s.append(("ferry_instance_busy_seconds", labels, ns / 1e9))
        yield Family(
            "nv_inference_pending_request_count", "Requests waiting in queues", "gauge", pending
        )
        yield Family("ferry_queue_depth", "Requests waiting, per profile", "gauge", depth)
        yield Family(
            "ferry_instance_busy_ratio",
            "Share of time since start each instance ran batches",
            "gauge",
            busy,
        )
        yield Family(
            "ferry_instance_busy_seconds", "Seconds each instance ran batches", "counter", busy_s
        )

    # ---- the HTTP endpoint ------------------------------------------------------------------

    def serve(self, host: str, port: int, ready: Probe | None = None) -> int:
        """Serve /metrics (and the HTTP health probes, answering `ready`) from a daemon thread;
        returns the bound port (port 0 picks one)."""
        self._endpoint = MetricsEndpoint(self.exposition, host, port, ready)
        return self._endpoint.port

    def stop(self) -> None:
        if self._endpoint is not None:
            self._endpoint.stop()
            self._endpoint = None
