"""Ferry's /metrics text: every sample prometheus-client would write, counters typed under
their own names as Triton types them, label values escaped, and nothing but numbers written
anew at each scrape."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ferry.common.errors import Overloaded, QueueFull
from ferry.engines.base import Timings
from ferry.scheduler.request import InferenceResult
from ferry.scheduler.slo import Decision
from ferry.telemetry import exposition
from ferry.telemetry.exposition import Exposition, Family, number
from ferry.telemetry.metrics import Metrics
from tests.prometheus_text import samples


def busy_metrics() -> Metrics:
    metrics = Metrics(
        state=lambda: [('odd "name"', "2", {0: 3}, {"i0": 2_000_000_000}, 4.0)],
        process=lambda: {"ferry_requests_in_flight": ("In flight", 5)},
    )
    for model in ("ranker", 'odd "name"', "back\\slash\nline"):
        result = InferenceResult({}, 1_000_000, Timings(10, 20, 30), 8, 1, 0, 3_000_000)
        metrics.request_done(model, "2", 4_000_000, result, None)
        metrics.request_done(model, "2", 1_000, None, QueueFull("full"))
        metrics.request_done(model, "2", 1_000, None, Overloaded("late", "budget"))
        metrics.batch_rows.child(model, "2").observe(8)
        metrics._model((model, "2")).slo[0] = Decision(0.001, 64, 0.004, 0.005, 0.8, True, 0.002)
    return metrics


def test_every_sample_is_what_prometheus_clients_writer_writes() -> None:
    metrics = busy_metrics()
    registry = CollectorRegistry()
    registry.register(metrics.collector())
    ours = samples(metrics.exposition().decode())
    assert ours == samples(generate_latest(registry).decode())
    odd = ("model", 'odd "name"')
    assert (
        ours[("nv_inference_request_failure", (odd, ("reason", "REJECTED"), ("version", "2")))] == 2
    )
    assert ours[("ferry_instance_busy_ratio", (("instance", "i0"), odd, ("version", "2")))] == 0.5
    assert ours[("ferry_requests_in_flight", ())] == 5


def test_counters_are_typed_under_their_own_names_as_triton_does() -> None:
    text = busy_metrics().exposition().decode()
    assert "# TYPE nv_inference_request_success counter\n" in text
    assert 'nv_inference_request_success{model="ranker",version="2"} 1.0\n' in text
    assert "# TYPE ferry_slo_refused_total counter\n" in text
    assert "_total_total" not in text and "# TYPE nv_inference_request_success_total" not in text


def test_label_values_are_escaped_and_labels_written_in_name_order() -> None:
    text = busy_metrics().exposition().decode()
    assert 'nv_inference_count{model="back\\\\slash\\nline",version="2"} ' in text
    assert 'ferry_slo_safety{model="odd \\"name\\"",profile="0",version="2"} 0.8\n' in text


def test_a_scrape_writes_only_numbers_anew() -> None:
    writer = Exposition()
    family = Family("hits", "Hits", "counter", [("hits", (("model", "m"),), 1.0)])
    assert writer.write([family]) == '# HELP hits Hits\n# TYPE hits counter\nhits{model="m"} 1.0\n'
    cached = writer._prefixes[("hits", (("model", "m"),))]
    later = Family("hits", "Hits", "counter", [("hits", (("model", "m"),), 2.0)])
    assert writer.write([later]).endswith('hits{model="m"} 2.0\n')
    assert writer._prefixes[("hits", (("model", "m"),))] is cached


def test_the_prefix_cache_starts_over_past_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Label sets of models long unloaded must not pile up in it."""
    monkeypatch.setattr(exposition, "CACHED_LINES", 2)
    writer = Exposition()
    many = Family("g", "G", "gauge", [("g", (("i", str(i)),), i) for i in range(5)])
    first = writer.write([many])
    kept = writer._prefixes[("g", (("i", "0"),))]
    assert writer.write([many]) == first
    assert writer._prefixes[("g", (("i", "0"),))] is not kept  # made anew after the reset


def test_values_are_written_as_prometheus_reads_them() -> None:
    assert [number(v) for v in (3, 0.5, 1e20, math.inf, -math.inf)] == [
        "3.0", "0.5", "1e+20", "+Inf", "-Inf"
    ]  # fmt: skip
    assert number(math.nan) == "NaN"
