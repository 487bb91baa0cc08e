"""Prometheus histograms that the event loop updates without locks.

Why not prometheus-client's `Histogram`: every `observe` there takes a lock per value, walks the
bucket bounds in a Python loop, and `labels()` takes another lock. That is cheap in a hot loop,
but on a request path that runs with cold caches after every trip through gRPC it was a visible
share of the `echo` handler's time (bench/serving_core.py). Here an observation is one `bisect`
in C and two additions.

Only the event loop writes. The scrape thread copies the bucket counts (a list copy is atomic
under the GIL) and derives the total from that copy, so the buckets, `_count` and `+Inf` of one
scrape always agree; `_sum` is read separately and may include an observation that the copied
buckets do not yet show, as with any histogram that is read while it is written.

A text writer of its own (`HistogramFamily.exposition`), for the reason telemetry/exposition.py
gives: histograms are most of the lines of a scrape (about twenty a model for each), and each
label set's lines are made once, up to the count; a scrape writes the numbers.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from itertools import accumulate

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from ferry.telemetry.exposition import escape_help, number, sample_prefix


class Histogram:
    """One label set's distribution: counts per bucket (upper bounds inclusive) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        # One count per bound, and a last one for values above every bound (only in +Inf).
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets, `le` bound and cumulative count, ending with +Inf (the total)."""
        counts = list(self.counts)  # one consistent copy
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip(self.bounds, counts, strict=False):
            total += count
            le = floatToGoString(bound)  # type: ignore[no-untyped-call]  # as the library writes it
            out.append((le, total))
        out.append(("+Inf", total + counts[-1]))
        return out


class HistogramFamily:
    """A named histogram with one `Histogram` per label values, exposed at scrape time."""

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], bounds: Sequence[float]
    ) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"histogram {name}: bucket bounds must increase, got {list(bounds)}")
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.bounds = tuple(bounds)
        self._children: dict[tuple[str, ...], Histogram] = {}
        # Each label set's lines up to the value: its buckets' (with `le`), then _count, _sum.
        # Written by scrape threads only (setting a key is atomic under the GIL).
        self._lines: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        self._head = f"# HELP {name} {escape_help(documentation)}\n# TYPE {name} histogram\n"

    def child(self, *values: str) -> Histogram:
        """The histogram of these label values (created on first use; look it up once and keep
        it where the path is hot)."""
        found = self._children.get(values)
        if found is None:
            if len(values) != len(self.labels):
                raise ValueError(f"histogram {self.name} takes labels {self.labels}, got {values}")
            found = self._children[values] = Histogram(self.bounds)
        return found

    def exposition(self) -> str:
        """The family in Prometheus' text format (0.0.4): the samples prometheus-client would
        write from `collect()`."""
        out = [self._head]
        for values, histogram in list(self._children.items()):
            lines = self._lines.get(values)
            if lines is None:
                lines = self._lines[values] = self._prefixes(values)
            counts = list(histogram.counts)  # one consistent copy
            totals = list(accumulate(counts))
            for prefix, total in zip(lines, totals, strict=False):
                out.append(f"{prefix}{total}.0\n")
            out.append(f"{lines[-2]}{totals[-1]}.0\n")
            out.append(f"{lines[-1]}{number(histogram.sum)}\n")
        return "".join(out)

    def _prefixes(self, values: tuple[str, ...]) -> tuple[str, ...]:
        labels = tuple(zip(self.labels, values, strict=True))
        name = self.name
        buckets = [sample_prefix(f"{name}_bucket", (*labels, ("le", le))) for le in self._les]
        count, total = sample_prefix(f"{name}_count", labels), sample_prefix(f"{name}_sum", labels)
        return (*buckets, count, total)

    def collect(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, histogram in list(self._children.items()):
            buckets = histogram.cumulative()
            family.add_metric(list(values), buckets, histogram.sum)
        return family
