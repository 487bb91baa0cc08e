"""OpenTelemetry tracing: a server span per request that joins the caller's trace, child spans for
its queue wait and its share of the compute, and one span per batch linked to every member.

Configuration follows OpenTelemetry's environment variables: OTEL_TRACES_EXPORTER (otlp,
console, none), OTEL_EXPORTER_OTLP_PROTOCOL / OTEL_EXPORTER_OTLP_TRACES_PROTOCOL (grpc,
http/protobuf), OTEL_EXPORTER_OTLP_ENDPOINT and the rest (read by the exporters themselves),
OTEL_TRACES_SAMPLER_ARG (the sampling ratio); `ferry serve --tracing/--trace-ratio` override.
Spans are exported from a background thread (BatchSpanProcessor); the event loop only records.
With tracing off no tracer exists and the request path pays one `is None` test.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ferry.scheduler.observer import BatchRecord
from ferry.scheduler.request import InferenceResult

EXPORTERS = ("none", "otlp", "console")


@dataclass(frozen=True)
class TracingConfig:
    exporter: str = "none"
    ratio: float = 1.0
    protocol: str = "grpc"

    def __post_init__(self) -> None:
        if self.exporter not in EXPORTERS:
            raise ValueError(f"tracing exporter must be one of {EXPORTERS}, got {self.exporter!r}")
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"trace ratio must be in 0..1, got {self.ratio}")
        if self.protocol not in ("grpc", "http/protobuf"):
            raise ValueError(f"OTLP protocol must be grpc or http/protobuf, got {self.protocol!r}")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], exporter: str | None = None, ratio: float | None = None
    ) -> TracingConfig:
        """The standard OTEL_* variables, overridden by explicit values when given."""
        chosen = exporter or environ.get("OTEL_TRACES_EXPORTER", "none").split(",")[0].strip()
        if ratio is None:
            ratio = float(environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0") or 1.0)
        protocol = environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        )
        return cls(chosen or "none", ratio, protocol)

    @property
    def enabled(self) -> bool:
        return self.exporter != "none"


def make_provider(config: TracingConfig, exporter: SpanExporter | None = None) -> TracerProvider:
    """A provider with the configured exporter (or the one given, for tests).

    Its sampler follows a caller's trace context and otherwise samples everything it is asked
    to: the ratio for requests without a context is applied by Tracing, before any span exists
    (see Tracing), so it must not be applied twice."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "ferry")}),
        sampler=ParentBased(ALWAYS_ON),
    )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif config.exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif config.exporter == "otlp":
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(config.protocol)))
    return provider


def _otlp_exporter(protocol: str) -> SpanExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter()


class Tracing:
    """Spans for requests and batches. Times from the scheduler are monotonic; spans need wall
    clock, so they are shifted by the offset between the two clocks taken at start.

    `ratio` is the sampling ratio of requests that arrive without a trace context. Such a request
    that is not sampled gets no span at all (one random draw decides), instead of the SDK's
    non-recording span: Ferry makes no outgoing calls that would carry its context, so nothing
    is lost, and the common case at low ratios costs next to nothing. A request that carries a
    `traceparent` goes to the SDK, whose parent-based sampler follows the caller's decision.
    """

    def __init__(self, provider: TracerProvider, ratio: float = 1.0) -> None:
        self.provider = provider
        self.ratio = ratio
        self.enabled = True
        # Per-model overrides of (enabled, ratio), set while serving (TraceSetting).
        self.by_model: dict[str, tuple[bool, float]] = {}
        self._tracer = provider.get_tracer("ferry")
        self._propagator = TraceContextTextMapPropagator()
        self._offset = time.time_ns() - time.monotonic_ns()

    def start_request(
        self,
        method: str,
        metadata: Sequence[tuple[str, Any]] | None,
        model: str,
        version: str,
        request_id: str,
    ) -> trace.Span | None:
        """The server span of one request, continuing the caller's W3C trace context; None
        when the request is not sampled and has no trace context of its own."""
        enabled, ratio = self.by_model.get(model, (self.enabled, self.ratio))
        if not enabled:  # tracing turned off: not even a caller's trace context is followed
            return None
        carrier = {k: v for k, v in metadata or () if k in ("traceparent", "tracestate")}
        if not carrier and ratio < 1.0 and random.random() >= ratio:
            return None
        parent = self._propagator.extract(carrier) if carrier else None
        attributes = {
            "ferry.model": model,
            "ferry.version": version,
            "ferry.request_id": request_id,
        }
        return self._tracer.start_span(
            method, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )

    def end_request(
        self,
        span: trace.Span,
        result: InferenceResult | None,
        enqueued_ns: int | None,
        error: BaseException | None,
        code: str = "OK",
    ) -> None:
        if span.is_recording():
            if result is not None and enqueued_ns is not None:
                context = trace.set_span_in_context(span)
                self._interval("queue", context, enqueued_ns, result.started_ns, {})
                self._interval(
                    "compute",
                    context,
                    result.started_ns,
                    result.finished_ns,
                    {"ferry.batch_id": result.batch_id, "ferry.batch_rows": result.batch_rows},
                )
            span.set_attribute("rpc.grpc.status_code", code)
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, str(error)))
        span.end()

    def _interval(
        self, name: str, context: Any, start_ns: int, end_ns: int, attributes: dict[str, Any]
    ) -> trace.Span:
        child = self._tracer.start_span(
            name, context=context, start_time=start_ns + self._offset, attributes=attributes
        )
        child.end(end_time=max(end_ns, start_ns) + self._offset)
        return child

    def batch_done(self, record: BatchRecord) -> None:
        """One span per batch, linked to every member's span; recorded only when a member is
        sampled (it then lives in that member's trace, so the sampler keeps it)."""
        contexts = [
            ctx
            for r in record.requests
            if isinstance(r.trace, trace.SpanContext) and (ctx := r.trace).trace_flags.sampled
        ]
        if not contexts:
            return
        model, version = record.name_and_version
        span = self._tracer.start_span(
            "batch",
            context=trace.set_span_in_context(trace.NonRecordingSpan(contexts[0])),
            links=[Link(c) for c in contexts],
            start_time=record.started_ns + self._offset,
            attributes={
                "ferry.model": model,
                "ferry.version": version,
                "ferry.profile": record.profile,
                "ferry.instance": record.instance,
                "ferry.device": record.device,
                "ferry.rows": record.rows,
                "ferry.requests": len(record.requests),
                "ferry.padding_ratio": record.padding_ratio,
                "ferry.batch_id": record.batch_id,
            },
        )
        if record.slo is not None:  # the latency controller's settings this batch formed under
            span.set_attributes(
                {
                    "ferry.slo.delay_us": round(record.slo.delay_s * 1e6),
                    "ferry.slo.cap_rows": record.slo.cap_rows,
                    "ferry.slo.predicted_p99_us": round(record.slo.predicted_p99_s * 1e6),
                    "ferry.slo.observed_p99_us": round(record.slo.observed_p99_s * 1e6),
                    "ferry.slo.safety": record.slo.safety,
                    "ferry.slo.loop_lag_us": round(record.slo.loop_lag_s * 1e6),
                }
            )
        if record.error is not None:
            span.set_status(Status(StatusCode.ERROR, str(record.error)))
        span.end(end_time=record.finished_ns + self._offset)

    def shutdown(self) -> None:
        self.provider.shutdown()  # flushes what the batch processor still holds
