"""Ferry's lock-free histograms expose exactly what prometheus-client's own Histogram would, in
the library's writer (`collect`) and in their own (`exposition`)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Histogram as ClientHistogram
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from ferry.telemetry.histogram import HistogramFamily
from ferry.telemetry.metrics import LATENCY_BUCKETS, ROWS_BUCKETS

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def exposed(registry: CollectorRegistry) -> Samples:
    return parsed(generate_latest(registry).decode())


def parsed(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")  # prometheus-client's creation timestamps
    }


class Exposes(Collector):
    def __init__(self, family: HistogramFamily) -> None:
        self.family = family

    def collect(self):  # type: ignore[no-untyped-def]
        yield self.family.collect()


values = st.floats(min_value=0, max_value=1e5, allow_nan=False, allow_infinity=False)
# Label values that the text format must escape, beside plain ones.
models = st.sampled_from(["a", "b", 'say "hi"', "back\\slash", "two\nlines", "ünï"])


@settings(max_examples=60, deadline=None)
@given(
    bounds=st.sampled_from([LATENCY_BUCKETS, ROWS_BUCKETS]),
    observed=st.lists(st.tuples(models, values), max_size=60),
    on_bounds=st.lists(st.sampled_from(list(ROWS_BUCKETS + LATENCY_BUCKETS)), max_size=10),
)
def test_same_buckets_count_and_sum_as_prometheus_client(
    bounds: tuple[float, ...], observed: list[tuple[str, float]], on_bounds: list[float]
) -> None:
    ours = HistogramFamily("h", "doc", ["model"], bounds)
    theirs_registry = CollectorRegistry()
    theirs = ClientHistogram("h", "doc", ["model"], buckets=bounds, registry=theirs_registry)
    for model, value in [*observed, *(("a", v) for v in on_bounds)]:  # values on a bound too
        ours.child(model).observe(value)
        theirs.labels(model).observe(value)
    ours_registry = CollectorRegistry()
    ours_registry.register(Exposes(ours))
    reference = exposed(theirs_registry)
    for mine in (exposed(ours_registry), parsed(ours.exposition())):
        assert mine.keys() == reference.keys()
        for key, value in reference.items():
            assert mine[key] == pytest.approx(value), key


def test_its_own_text_names_and_documents_the_family_once() -> None:
    family = HistogramFamily("rows", "Rows per batch\nwith a \\", ["model"], (1, 2))
    family.child("m").observe(1)
    family.child("n").observe(3)
    text = family.exposition()
    assert text.startswith("# HELP rows Rows per batch\\nwith a \\\\\n# TYPE rows histogram\n")
    assert text.count("# TYPE") == 1
    assert 'rows_bucket{le="+Inf",model="n"} 1.0\n' in text
    assert 'rows_sum{model="n"} 3.0\n' in text


def test_a_value_on_a_bound_counts_in_that_bucket() -> None:
    family = HistogramFamily("rows", "doc", ["model"], (1, 2, 4))
    child = family.child("m")
    for value in (1, 2, 3, 4, 5):
        child.observe(value)
    assert child.cumulative() == [("1.0", 1), ("2.0", 2), ("4.0", 4), ("+Inf", 5)]
    assert child.sum == 15


def test_bounds_must_increase_and_labels_must_match() -> None:
    with pytest.raises(ValueError, match="must increase"):
        HistogramFamily("h", "doc", ["model"], (2, 1))
    with pytest.raises(ValueError, match="takes labels"):
        HistogramFamily("h", "doc", ["model", "version"], (1, 2)).child("only-one")
