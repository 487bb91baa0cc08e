"""Which requests get a span: the configured ratio for requests without a trace context (no
span at all for the others), and the caller's decision for requests that carry one."""

from __future__ import annotations

import random

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ferry.telemetry.tracing import Tracing, TracingConfig, make_provider

SAMPLED = (("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),)
UNSAMPLED = (("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),)


def tracing(ratio: float) -> Tracing:
    return Tracing(make_provider(TracingConfig("console", ratio), InMemorySpanExporter()), ratio)


def test_without_a_trace_context_the_ratio_decides_and_the_rest_get_no_span() -> None:
    random.seed(11)
    traced = tracing(0.25)
    spans = [traced.start_request("ModelInfer", (), "m", "1", str(i)) for i in range(4000)]
    kept = [s for s in spans if s is not None]
    assert 850 <= len(kept) <= 1150  # 1000 expected; binomial sd 27
    assert all(s.is_recording() for s in kept)
    assert all(
        s is None for s in (tracing(0.0).start_request("M", (), "m", "", "") for _ in range(200))
    )
    assert all(
        s is not None
        for s in (tracing(1.0).start_request("M", (), "m", "", "") for _ in range(200))
    )


def test_a_callers_trace_context_decides_whatever_the_ratio() -> None:
    never = tracing(0.0)
    joined = never.start_request("ModelInfer", SAMPLED, "m", "1", "a")
    assert joined is not None and joined.is_recording()
    assert format(joined.get_span_context().trace_id, "032x") == SAMPLED[0][1][3:35]
    declined = never.start_request("ModelInfer", UNSAMPLED, "m", "1", "b")
    assert declined is not None and not declined.is_recording()
