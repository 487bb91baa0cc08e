"""Search mode: the highest request rate whose latency percentile stays under an SLO.

Open-loop runs at increasing rates: doubling from `start_rate` until a step fails (the
percentile over the SLO, or errors above the error budget), then bisecting between the last
rate that passed and the first that failed, for a fixed number of steps. Each step is a full
open-loop run, so the answer holds for Poisson traffic at that rate, queueing included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ferry.loadtest.stats import LoadResult


@dataclass(frozen=True)
class Slo:
    latency_ms: float
    percentile: str = "p99"
    error_budget: float = 0.001  # largest share of requests that may fail

    def met_by(self, result: LoadResult) -> bool:
        errors = sum(result.errors.values())
        attempted = result.requests + errors
        if attempted == 0:
            return False
        if errors / attempted > self.error_budget:
            return False
        value = result.latency_ms.get(self.percentile)
        return value is not None and value <= self.latency_ms


@dataclass
class SearchResult:
    best_rate: float  # 0 when even the first rate failed
    steps: list[tuple[float, bool, LoadResult]] = field(default_factory=list)


def search(
    run_at: Callable[[float], LoadResult],
    slo: Slo,
    *,
    start_rate: float,
    max_rate: float,
    bisect_steps: int = 5,
) -> SearchResult:
    """Find the highest rate in [start_rate, max_rate] that meets `slo` (see the module)."""
    outcome = SearchResult(0.0)

    def attempt(rate: float) -> bool:
        result = run_at(rate)
        ok = slo.met_by(result)
        outcome.steps.append((rate, ok, result))
        return ok

    good, bad = 0.0, 0.0
    rate = start_rate
    while rate <= max_rate:
        if attempt(rate):
            good = rate
            rate *= 2
        else:
            bad = rate
            break
    if good == 0.0:
        return outcome
    if bad == 0.0:  # never failed: the answer is max_rate if it passed, else the last doubling
        if good < max_rate and attempt(max_rate):
            good = max_rate
        outcome.best_rate = good
        return outcome
    for _ in range(bisect_steps):
        middle = (good + bad) / 2
        if attempt(middle):
            good = middle
        else:
            bad = middle
    outcome.best_rate = good
    return outcome
