"""Latency percentiles and the merged outcome of a load run (one or many client processes)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def percentiles(samples_s: list[float] | np.ndarray) -> dict[str, float]:
    """p50/p90/p99/p99.9/max in milliseconds (numpy's linear interpolation); {} when empty."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    if ms.size == 0:
        return {}
    values = np.percentile(ms, PERCENTILES)
    out = {f"p{p:g}": float(v) for p, v in zip(PERCENTILES, values, strict=True)}
    out["max"] = float(ms.max())
    return out


@dataclass
class Tally:
    """What one client process saw: latencies of answered requests and errors by status."""

    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    rows: int = 0  # rows of answered requests
    cpu_s: float = 0.0
    late_sends: int = 0  # open loop: requests sent more than 1 ms after their intended time
    by_target: Counter[str] = field(default_factory=Counter)  # answered, per replica
    # open loop: (intended send time from the measured start, latency s, answered OK)
    timeline: list[tuple[float, float, bool]] = field(default_factory=list)

    def merge(self, other: Tally) -> None:
        self.by_target.update(other.by_target)
        self.timeline.extend(other.timeline)
        self.latencies_s.extend(other.latencies_s)
        self.errors.update(other.errors)
        self.sent += other.sent
        self.rows += other.rows
        self.cpu_s += other.cpu_s
        self.late_sends += other.late_sends


@dataclass
class LoadResult:
    """A finished run, as printed and as written to JSON."""

    model: str
    mode: str
    duration_s: float
    requests: int
    rows: int
    errors: dict[str, int]
    requests_per_s: float
    rows_per_s: float
    latency_ms: dict[str, float]
    concurrency: int = 0
    target_rate: float = 0.0
    rows_per_request: float = 0.0
    client_cpu_cores: float = 0.0
    client_processes: int = 1
    late_sends: int = 0
    server: dict[str, float] = field(default_factory=dict)
    replicas: dict[str, float] = field(default_factory=dict)  # share of answers, per target
    budget_ms: float = 0.0  # with a budget: goodput and the per-second timeline below
    goodput_per_s: float = 0.0  # requests answered within the budget, per second
    timeline: list[dict[str, float]] = field(default_factory=list)
