"""A batch span carries the settings the latency controller formed it under, the loop's lag
among them: the figure that tells a slow trace's batch from its front end."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ferry.engines.base import Timings
from ferry.scheduler.batch import Batch
from ferry.scheduler.observer import BatchRecord
from ferry.scheduler.request import InferenceRequest
from ferry.scheduler.slo import Decision
from ferry.telemetry.tracing import Tracing, TracingConfig, make_provider

SAMPLED = (("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),)


@pytest.mark.asyncio
async def test_a_batch_span_shows_the_controllers_settings_and_the_loops_lag() -> None:
    exported = InMemorySpanExporter()
    tracing = Tracing(make_provider(TracingConfig("console", 1.0), exported), 1.0)
    span = tracing.start_request("ModelInfer", SAMPLED, "dlrm", "1", "a")
    assert span is not None
    request = InferenceRequest(
        {"x": np.zeros((4, 2), np.float32)},
        4,
        (),
        asyncio.get_running_loop().create_future(),
        trace=span.get_span_context(),
    )
    decision = Decision(0.0015, 256, 0.006, 0.0072, 0.75, True, 0.0031)
    tracing.batch_done(
        BatchRecord(
            "dlrm:1", 0, "i0", "cpu", 7, Batch([request]), 1_000, 2_000, Timings(), slo=decision
        )
    )
    (batch,) = [s for s in exported.get_finished_spans() if s.name == "batch"]
    attributes = dict(batch.attributes or {})
    assert {k: v for k, v in attributes.items() if k.startswith("ferry.slo.")} == {
        "ferry.slo.delay_us": 1500,
        "ferry.slo.cap_rows": 256,
        "ferry.slo.predicted_p99_us": 6000,
        "ferry.slo.observed_p99_us": 7200,
        "ferry.slo.safety": 0.75,
        "ferry.slo.loop_lag_us": 3100,
    }
