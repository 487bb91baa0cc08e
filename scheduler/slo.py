"""SLO-driven batching: a latency budget per model instead of a fixed queue delay and batch cap.

For one profile the controller learns what a batch costs (run time = a + b * rows, an
exponentially weighted least-squares fit over the batches that ran, so it follows drift) and how
fast rows arrive, and from them sets, as load changes:

- the batch row cap: the largest batch whose run fits half the usable budget (a request may wait
  for a running batch, then run in its own);
- the queue delay: the time to gather the rows the arrival rate needs per batch to keep the
  instances below saturation, never more than the budget leaves after two runs (0 under light
  load, where batching buys nothing);
- the usable share of the budget (`safety`): cut back when the observed p99 over the last second
  crosses the budget, raised slowly while it stays well under.

It also predicts a new request's completion (the queue ahead of it in batches of the cap, spread
over the instances, plus the batch running now and its own) and refuses at once a request that
cannot make its budget or deadline (UNAVAILABLE, retryable) instead of letting it wait to fail:
refused requests cost no compute. Before it has seen enough batches it neither refuses nor
shrinks anything: the configured delay and cap apply.

Everything runs on the event loop with the scheduler's clock, in O(1) per request and batch.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ferry.common.errors import Overloaded

LEARNED_AFTER = 8
"""Batches seen before the controller's decisions replace the configured ones."""

FIRST_SKIPPED = 2
"""The first batches are not learned from: they carry one-time costs (allocations, cold caches)
that would make every later batch look dear."""

OUTLIER = 4.0
"""A batch that took this many times its predicted run (a pause, a noisy neighbour) is not
learned from, unless the next ones agree (then the machine really got slower)."""

PROBE_S = 0.5
"""However dear the model thinks batches are, one request is admitted this often, so that a
wrong estimate meets a measurement instead of refusing everything for good."""

DECAY = 0.97
"""Weight kept by past batches at each new one (a half-life of about 23 batches)."""

WINDOW_S = 1.0
"""The observed p99 is over the requests answered in the last second."""

UTILIZATION = 0.85
"""Batch size is chosen so that the instances stay this busy at the current arrival rate."""

ADMIT = 0.9
"""A request is admitted when its predicted latency is within this share of the budget: the
prediction does not see the arrivals that will share its batches."""

SAFETY_START, SAFETY_MIN, SAFETY_MAX = 0.7, 0.2, 0.9
REVIEW_S = 0.25  # how often the observed p99 is compared with the budget


@dataclass(frozen=True)
class SloConfig:
    """p99_s: the latency budget (queue + run) of the model's requests.
    refuse_early: refuse at once what is predicted to miss it (False: queue it, as without a
        budget). delay_limit_s: the config's max_queue_delay when set (> 0): never exceeded."""

    p99_s: float
    refuse_early: bool = True
    delay_limit_s: float | None = None

    def __post_init__(self) -> None:
        if not self.p99_s > 0:
            raise ValueError(f"the p99 budget must be > 0, got {self.p99_s}")


@dataclass(frozen=True)
class Decision:
    delay_s: float
    cap_rows: int
    predicted_p99_s: float
    observed_p99_s: float
    safety: float
    learned: bool


class RunTimeModel:
    """Run time of a batch as a + b * rows, fitted by exponentially weighted least squares."""

    def __init__(self) -> None:
        self._w = self._x = self._y = self._xx = self._xy = 0.0
        self.batches = 0
        self._seen = 0
        self._outliers = 0  # in a row

    def observe(self, rows: int, seconds: float) -> None:
        self._seen += 1
        if self._seen <= FIRST_SKIPPED:
            return
        if self.batches >= LEARNED_AFTER and seconds > OUTLIER * self.predict(rows) + 1e-4:
            self._outliers += 1
            if self._outliers < 3:
                return
        self._outliers = 0
        d = DECAY
        self._w = self._w * d + 1.0
        self._x = self._x * d + rows
        self._y = self._y * d + seconds
        self._xx = self._xx * d + rows * rows
        self._xy = self._xy * d + rows * seconds
        self.batches += 1

    def predict(self, rows: int) -> float:
        if self._w == 0:
            return 0.0
        mean_x, mean_y = self._x / self._w, self._y / self._w
        spread = self._xx / self._w - mean_x * mean_x
        if spread < (0.25 * mean_x) ** 2:
            # Batches of about one size say nothing of the line's slope: proportional to rows.
            return mean_y / mean_x * rows if mean_x > 0 else 0.0
        slope = (self._xy / self._w - mean_x * mean_y) / spread
        if slope <= 0:  # noise: a bigger batch cannot cost less
            return mean_y / mean_x * rows
        return max(0.0, mean_y + slope * (rows - mean_x))


class SloController:
    def __init__(self, config: SloConfig, instances: int, max_rows: int, now_ns: int) -> None:
        self.config = config
        self._instances = max(1, instances)
        self._max_rows = max(1, max_rows)
        self.cost = RunTimeModel()
        self._rate = 0.0  # rows per second, exponentially weighted
        self._request_rows = 1.0  # mean rows per request, exponentially weighted
        self._last_arrival_ns = now_ns
        self._answered: deque[tuple[int, float]] = deque()  # (answered at, latency s)
        self._safety = SAFETY_START
        self._reviewed_ns = now_ns
        self._observed_p99 = 0.0
        self.refused: dict[str, int] = {}
        self._admitted_ns = now_ns
        self.decision = Decision(0.0, self._max_rows, 0.0, 0.0, self._safety, False)

    @property
    def learned(self) -> bool:
        return self.cost.batches >= LEARNED_AFTER

    # ---- what happened ---------------------------------------------------------------------

    def arrived(self, rows: int, now_ns: int) -> None:
        gap = max((now_ns - self._last_arrival_ns) / 1e9, 1e-6)
        self._last_arrival_ns = now_ns
        # A rate estimate that weighs the last ~0.1 s most: the step from one load to another
        # shows within a fraction of a second.
        keep = math.exp(-gap / 0.1)
        self._rate = self._rate * keep + (1 - keep) * (rows / gap)
        self._request_rows = 0.95 * self._request_rows + 0.05 * rows

    def batch_ran(self, rows: int, seconds: float, now_ns: int) -> None:
        self.cost.observe(rows, seconds)
        self._decide(now_ns)

    def answered(self, latency_s: float, now_ns: int) -> None:
        self._answered.append((now_ns, latency_s))

    # ---- decisions -------------------------------------------------------------------------

    def _decide(self, now_ns: int) -> None:
        if not self.learned:
            return
        if now_ns - self._reviewed_ns >= REVIEW_S * 1e9:
            self._review(now_ns)
        budget = self.config.p99_s * self._safety
        cost = self.cost.predict
        cap = self._max_rows
        while cap > 1 and 2 * cost(cap) > budget:  # largest batch that fits (few steps: halving)
            cap = max(1, cap * 3 // 4)
        need = 1
        throughput_wanted = self._rate / UTILIZATION
        while need < cap and self._instances * need / max(cost(need), 1e-9) < throughput_wanted:
            need = min(cap, need * 2)
        rows_short = max(0.0, need - self._request_rows)
        delay = rows_short / self._rate if self._rate > 0 else 0.0
        delay = min(delay, max(0.0, budget - 2 * cost(cap)))
        if self.config.delay_limit_s is not None:
            delay = min(delay, self.config.delay_limit_s)
        self.decision = Decision(
            delay, cap, delay + 2 * cost(cap), self._observed_p99, self._safety, True
        )

    def _review(self, now_ns: int) -> None:
        """Back off when the last second's p99 crossed the budget; creep back when well under."""
        self._reviewed_ns = now_ns
        horizon = now_ns - int(WINDOW_S * 1e9)
        answered = self._answered
        while answered and answered[0][0] < horizon:
            answered.popleft()
        if len(answered) < 20:
            return
        latencies = sorted(latency for _, latency in answered)
        self._observed_p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        if self._observed_p99 > self.config.p99_s:
            self._safety = max(SAFETY_MIN, self._safety * 0.75)
        elif self._observed_p99 < 0.6 * self.config.p99_s:
            self._safety = min(SAFETY_MAX, self._safety + 0.02)

    def delay_ns(self, configured_ns: int) -> int:
        return int(self.decision.delay_s * 1e9) if self.learned else configured_ns

    def cap_rows(self, configured: int) -> int:
        return min(configured, self.decision.cap_rows) if self.learned else configured

    def predicted_latency_s(self, queued_rows: int, rows: int) -> float:
        """A request's wait and run if it queued now: the delay it may wait out, the batch
        running now, then the queue up to and including it in batches of the cap, spread over
        the instances."""
        cap = self.decision.cap_rows
        batch = self.cost.predict(cap)
        batches = math.ceil((queued_rows + rows) / cap)
        return self.decision.delay_s + batch + batches / self._instances * batch

    def refusal(
        self, queued_rows: int, rows: int, now_ns: int, deadline_ns: int | None
    ) -> Overloaded | None:
        """The refusal of a request arriving now that would miss its budget or deadline; None:
        admit it."""
        if not self.config.refuse_early or not self.learned:
            return None
        if now_ns - self._admitted_ns >= PROBE_S * 1e9:
            self._admitted_ns = now_ns  # a probe: whatever the estimate says
            return None
        predicted = self.predicted_latency_s(queued_rows, rows)
        if deadline_ns is not None and now_ns + predicted * 1e9 > deadline_ns:
            reason = "deadline"
            message = (
                f"predicted to finish in {predicted * 1e3:.1f} ms, after its deadline "
                f"({(deadline_ns - now_ns) / 1e6:.1f} ms left)"
            )
        elif predicted > ADMIT * self.config.p99_s:
            reason = "budget"
            message = (
                f"predicted to finish in {predicted * 1e3:.1f} ms, over the model's p99 "
                f"budget of {self.config.p99_s * 1e3:g} ms"
            )
        else:
            self._admitted_ns = now_ns
            return None
        self.refused[reason] = self.refused.get(reason, 0) + 1
        return Overloaded(message, reason)
