"""SLO-driven batching: a latency budget per model instead of a fixed queue delay and batch cap.

For one profile the controller learns what a batch costs (its time on the instance = a + b * rows
for the engine's own time, an exponentially weighted least-squares fit over the batches that ran,
so it follows drift, plus the mean of the rest: hand-offs and waits) and how fast rows arrive, and
from them sets, as load changes:

- the batch row cap: the largest batch whose run takes at most `CAP_SHARE` of the budget (a
  request may wait for a running batch, then run in its own), but never smaller than what makes
  a batch meaningfully faster: where a batch's cost is mostly fixed (a GPU, whose time per batch
  is launches and hand-offs more than rows), a smaller batch is hardly quicker and only cuts
  throughput. Nor is it ever less than two requests. And while every batch seen was of about
  one size, the cost of bigger ones is a guess (proportional to rows, the dearest line through
  what was seen): the cap then stays at least twice that size, so that load can form bigger
  batches and show what they cost, instead of a guess made at light load capping batches for
  good;
- the queue delay: the time to gather the rows per batch that keep the instances below
  saturation at the current arrival rate (0 under light load, where batching buys nothing),
  never more than `DELAY_SHARE` of the budget;
- the admission share (`safety`): the share of the budget a new request's predicted latency may
  take. Cut back in proportion when the observed p99 over the last second crosses its target
  (`TARGET` of the budget), at most once per second (the window must first show what the cut
  did), and raised step by step while the p99 stays well under. It acts on admission only:
  shrinking batches when latency is high would cut throughput exactly when the queue needs it
  most.

It predicts a new request's completion (what is left of the delay or of the batch running, the queue
ahead of it in batches of the cap spread over the instances, then its own batch; scaled by what
answered requests took against their predictions; plus the event loop's recent lag,
scheduler/loop_lag.py, which a request meets before it reaches the queue and again after its batch
and which no batch cost explains) and refuses at once a request that cannot make its
budget or deadline (UNAVAILABLE, retryable) instead of letting it wait to fail: refused requests
cost no compute. Before it has seen enough batches it neither refuses nor shrinks anything: the
configured delay and cap apply.

What a batch costs is its time on the instance (dispatch to finish, hand-offs and waits for a CPU
included), not the engine's compute alone: on cores shared with the front end that is the time
the instance is really taken, and what capacity is made of. On an instance that holds several
batches at once (a GPU instance's staging slots) it is the time the batch added: from its start
or the end of the batch before it, whichever is later (scheduler/runner.py).

Everything runs on the event loop with the scheduler's clock, in O(1) per request and batch.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ferry.common.errors import Overloaded
from ferry.scheduler.loop_lag import LoopLag

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

CAP_SHARE = 0.4
"""The largest batch runs within this share of the budget."""

SHRINK_GAIN = 0.9
"""The cap shrinks (by a quarter) only while that makes a batch at least this much faster."""

DELAY_SHARE = 0.1
"""The queue delay never takes more than this share of the budget."""

SAFETY_START, SAFETY_MIN, SAFETY_MAX = 0.8, 0.3, 0.9
"""The admission share: where it starts, and its bounds."""

CALIBRATION = 0.02
"""Weight of each answered request in the calibration of predictions (answered / planned)."""

CALIBRATION_S = 0.5
"""...or, when answers are sparse because requests were refused, the time constant of the
calibration (a controller refusing most requests learns from its probes, or it could not
reopen). When they are sparse only because few requests came (a model idle for a minute), each
weighs as usual: the first answer of a burst must not set the calibration alone."""

CALIBRATION_LIMIT = math.log(4.0)
"""One request moves the calibration by a ratio of at most this (in log terms): a stalled
batch must not make every later prediction absurd."""

REVIEW_S = 0.25  # how often the observed p99 is compared with its target
MIN_JUDGED = 20  # answers in the window before their p99 may cut the admission share
TARGET = 0.85
"""The observed p99 is held under this share of the budget, not at the budget itself: a p99 over
one second is the few slowest answers of that second, and a controller aiming at the budget
crosses it whenever one of them is unlucky."""
DEEPEST_CUT = 0.7  # a cut scales the share by target / observed p99, never by less than this
RECOVER_BELOW = 0.7  # the share grows back while the observed p99 is under this share of it
RECOVER = 1.1  # ...by this much per review


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
    loop_lag_s: float = 0.0  # the event loop's recent lag (scheduler/loop_lag.py), waited too


class RunTimeModel:
    """Run time of a batch as a + b * rows, fitted by exponentially weighted least squares.

    Given the engine's own time for each batch, the line is fitted to that, and what the batch
    took beyond it (hand-offs between threads and the event loop, waits for the GIL or a CPU) is
    added as a mean: those waits do not grow with rows, and on a machine where they vary a lot
    a line fitted to whole batch times takes their noise for a cost per row (then a big batch
    looks dear and the cap shrinks for nothing)."""

    def __init__(self) -> None:
        self._w = self._x = self._y = self._xx = self._xy = self._rest = 0.0
        self.batches = 0
        self._seen = 0
        self._outliers = 0  # in a row

    def observe(self, rows: int, seconds: float, engine_s: float = 0.0) -> None:
        """A batch of `rows` held its instance `seconds`, of which the engine reported
        `engine_s` (0.0: not known; the whole time is then fitted)."""
        self._seen += 1
        if self._seen <= FIRST_SKIPPED:
            return
        if self.batches >= LEARNED_AFTER and seconds > OUTLIER * self.predict(rows) + 1e-4:
            self._outliers += 1
            if self._outliers < 3:
                return
        self._outliers = 0
        fitted = engine_s if 0.0 < engine_s <= seconds else seconds
        d = DECAY
        self._w = self._w * d + 1.0
        self._x = self._x * d + rows
        self._y = self._y * d + fitted
        self._xx = self._xx * d + rows * rows
        self._xy = self._xy * d + rows * fitted
        self._rest = self._rest * d + (seconds - fitted)
        self.batches += 1

    @property
    def typical_rows(self) -> float:
        """The weighted mean rows of the batches learned from."""
        return self._x / self._w if self._w else 0.0

    @property
    def knows_slope(self) -> bool:
        """Whether the batches learned from differ enough in size to tell fixed cost from cost
        per row."""
        if self._w == 0:
            return False
        mean_x = self._x / self._w
        return self._xx / self._w - mean_x * mean_x >= (0.25 * mean_x) ** 2

    def predict(self, rows: int) -> float:
        if self._w == 0:
            return 0.0
        return self._rest / self._w + self._line(rows)

    def _line(self, rows: int) -> float:
        mean_x, mean_y = self._x / self._w, self._y / self._w
        if not self.knows_slope:
            # Batches of about one size say nothing of the line's slope: proportional to rows.
            return mean_y / mean_x * rows if mean_x > 0 else 0.0
        spread = self._xx / self._w - mean_x * mean_x
        slope = (self._xy / self._w - mean_x * mean_y) / spread
        if slope <= 0:  # noise: a bigger batch cannot cost less
            return mean_y / mean_x * rows
        return max(0.0, mean_y + slope * (rows - mean_x))


class SloController:
    def __init__(
        self,
        config: SloConfig,
        instances: int,
        max_rows: int,
        now_ns: int,
        loop_lag: LoopLag | None = None,
    ) -> None:
        """`loop_lag`: the serving loop's probe (None: its lag is taken as none)."""
        self.config = config
        self._loop_lag = loop_lag
        self._instances = max(1, instances)
        self._max_rows = max(1, max_rows)
        self.cost = RunTimeModel()
        self._rate = 0.0  # rows per second, exponentially weighted
        self._request_rows = 1.0  # mean rows per request, exponentially weighted (first: its own)
        self._last_arrival_ns = now_ns
        self._answered: deque[tuple[int, float]] = deque()  # (answered at, latency s)
        self._safety = SAFETY_START
        self._cut_ns: int | None = None  # when the share was last cut for a p99 over target
        self._reviewed_ns = now_ns
        self._observed_p99 = 0.0
        self._bias = 0.0  # log of answered / planned latency, exponentially weighted
        self.running = 0  # batches running now (the runner counts them)
        self._calibrated_ns = now_ns
        self._refused_since_answer = False
        self.refused: dict[str, int] = {}
        self._admitted_ns = now_ns
        self.decision = Decision(0.0, self._max_rows, 0.0, 0.0, self._safety, False)

    @property
    def learned(self) -> bool:
        return self.cost.batches >= LEARNED_AFTER

    @property
    def arrival_rate(self) -> float:
        """Rows per second arriving now, as the controller estimates it."""
        return self._rate

    # ---- what happened ---------------------------------------------------------------------

    def arrived(self, rows: int, now_ns: int) -> None:
        gap = max((now_ns - self._last_arrival_ns) / 1e9, 1e-6)
        self._last_arrival_ns = now_ns
        # A rate estimate that weighs the last ~0.1 s most: the step from one load to another
        # shows within a fraction of a second.
        keep = math.exp(-gap / 0.1)
        first = self._rate == 0.0
        self._rate = self._rate * keep + (1 - keep) * (rows / gap)
        self._request_rows = rows if first else 0.95 * self._request_rows + 0.05 * rows

    def batch_ran(self, rows: int, seconds: float, now_ns: int, engine_s: float = 0.0) -> None:
        """A batch of `rows` held its instance `seconds` (`engine_s` of it the engine's own
        time, when known) and finished at `now_ns`."""
        self.cost.observe(rows, seconds, engine_s)
        self._decide(now_ns)

    def answered(self, latency_s: float, planned_s: float, now_ns: int) -> None:
        """A request answered `latency_s` after it queued; `planned_s`: the raw prediction it
        was admitted on (0.0: none). The ratio calibrates later predictions: the cost model
        sees batches, not what else shares the cores or how batches really form."""
        self._answered.append((now_ns, latency_s))
        if planned_s > 0.0 and latency_s > 0.0:
            ratio = min(CALIBRATION_LIMIT, max(-CALIBRATION_LIMIT, math.log(latency_s / planned_s)))
            # Per answer, or per half second while refusals keep answers few.
            gap = max(0, now_ns - self._calibrated_ns) / 1e9
            self._calibrated_ns = now_ns
            weight = CALIBRATION
            if self._refused_since_answer:
                weight = max(CALIBRATION, 1.0 - math.exp(-gap / CALIBRATION_S))
                self._refused_since_answer = False
            self._bias += weight * (ratio - self._bias)

    # ---- decisions -------------------------------------------------------------------------

    def _decide(self, now_ns: int) -> None:
        if not self.learned:
            return
        if now_ns - self._reviewed_ns >= REVIEW_S * 1e9:
            self._review(now_ns)
        budget = self.config.p99_s
        cost = self.cost.predict
        cap = self._cap(budget)
        alone = max(1, round(self._request_rows))  # a batch of one request
        need = alone
        throughput_wanted = self._rate / UTILIZATION
        while need < cap and self._instances * need / max(cost(need), 1e-9) < throughput_wanted:
            need = min(cap, need * 2)
        # Time to gather the rows beyond one request's, at the rate they arrive.
        delay = (need - alone) / self._rate if need > alone and self._rate > 0 else 0.0
        delay = min(delay, DELAY_SHARE * budget)
        if self.config.delay_limit_s is not None:
            delay = min(delay, self.config.delay_limit_s)
        full = self._calibrated(max(delay, 0.5 * cost(cap)) + cost(cap))
        lag = self._lag_s()
        self.decision = Decision(delay, cap, full, self._observed_p99, self._safety, True, lag)

    def _cap(self, budget: float) -> int:
        """The largest batch whose run fits `CAP_SHARE` of the budget, shrunk only while
        shrinking makes batches faster, never below two requests (a cap of one request makes
        every batch a lone request: on a machine where even that misses the budget's share,
        throughput would collapse and every queued request be refused), nor below twice the size
        seen while that is all the cost model knows (see the module's docstring)."""
        cost = self.cost.predict
        cap = self._max_rows
        seen = 0.0 if self.cost.knows_slope else self.cost.typical_rows
        floor = min(cap, math.ceil(2 * max(seen, self._request_rows)))
        while cap > floor and cost(cap) > CAP_SHARE * budget:  # few steps: a quarter each
            smaller = max(floor, cap * 3 // 4)
            if cost(smaller) > SHRINK_GAIN * cost(cap):
                break  # the cost is mostly fixed: a smaller batch only serves fewer rows
            cap = smaller
        return cap

    def _review(self, now_ns: int) -> None:
        """Cut the admission share when the last second's p99 crossed its target, raise it
        while the p99 is well under. Too few answers to judge a p99 may still show it is under:
        a controller that refuses nearly everything sees few answers, and must not stay shut
        for want of them."""
        self._reviewed_ns = now_ns
        horizon = now_ns - int(WINDOW_S * 1e9)
        answered = self._answered
        while answered and answered[0][0] < horizon:
            answered.popleft()
        if not answered:
            return
        latencies = sorted(latency for _, latency in answered)
        self._observed_p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        # What callers saw: the queue-to-answer p99 and the loop's lag on the way in.
        seen = self._observed_p99 + self._lag_s()
        target = TARGET * self.config.p99_s
        if seen > target:
            settled = self._cut_ns is None or now_ns - self._cut_ns >= WINDOW_S * 1e9
            if len(latencies) >= MIN_JUDGED and settled:
                self._cut_ns = now_ns
                cut = max(DEEPEST_CUT, target / seen)
                self._safety = max(SAFETY_MIN, self._safety * cut)
        elif seen < RECOVER_BELOW * self.config.p99_s:
            self._safety = min(SAFETY_MAX, self._safety * RECOVER)

    def delay_ns(self, configured_ns: int) -> int:
        return int(self.decision.delay_s * 1e9) if self.learned else configured_ns

    def cap_rows(self, configured: int) -> int:
        return min(configured, self.decision.cap_rows) if self.learned else configured

    def predicted_latency_s(self, queued_rows: int, rows: int, waited_s: float = 0.0) -> float:
        """A request's wait and run if it queued now, as the controller expects it: the raw
        prediction (`_plan_s`) times what answered requests took against theirs, and the loop's
        lag."""
        return self._predicted(self._plan_s(queued_rows, rows, waited_s))

    def _predicted(self, planned_s: float) -> float:
        """A plan as a caller would wait it: calibrated, and the loop's lag, which the request
        met on its way here (before it queued: unseen by the plan) and its answer meets again."""
        return self._calibrated(planned_s) + self._lag_s()

    def _calibrated(self, planned_s: float) -> float:
        """A planned latency scaled by what answered requests took against their plans."""
        return planned_s * math.exp(self._bias)

    def _lag_s(self) -> float:
        return self._loop_lag.worst_s if self._loop_lag is not None else 0.0

    def _plan_s(self, queued_rows: int, rows: int, waited_s: float) -> float:
        """The wait and run the cost model plans for: what is left of the queue delay (its
        batch's oldest request has waited `waited_s` of it) or, when every instance is busy,
        half a full batch (what is left of the one running, on average), whichever is longer
        (the two overlap), the queue ahead of it in batches of the cap spread over the
        instances, then its own batch. Busy or idle is known, not averaged into the
        calibration: a calibration learned at light load must still hold at heavy load."""
        cap = self.decision.cap_rows
        cost = self.cost.predict
        full = cost(cap)
        ahead = queued_rows + rows
        own = min(ahead, cap)
        queue = (ahead - own) / cap * full / self._instances
        delay_left = max(0.0, self.decision.delay_s - waited_s)
        running = 0.5 * full if self.running >= self._instances else 0.0
        return max(delay_left, running) + queue + cost(own)

    def admit(
        self,
        queued_rows: int,
        rows: int,
        now_ns: int,
        deadline_ns: int | None,
        waited_s: float = 0.0,
    ) -> float:
        """Admit a request arriving now, or raise Overloaded when it would miss its budget or
        deadline. Returns the raw prediction it was admitted on (0.0: none was made), which
        `answered` compares with what it took. `waited_s`: how long the oldest request it
        would share a batch with has waited."""
        if not self.learned:
            return 0.0
        plan = self._plan_s(queued_rows, rows, waited_s)
        if not self.config.refuse_early or now_ns - self._admitted_ns >= PROBE_S * 1e9:
            self._admitted_ns = now_ns  # a probe: whatever the estimate says
            return plan
        predicted = self._predicted(plan)
        if deadline_ns is not None and now_ns + predicted * 1e9 > deadline_ns:
            reason = "deadline"
            message = (
                f"predicted to finish in {predicted * 1e3:.1f} ms, after its deadline "
                f"({(deadline_ns - now_ns) / 1e6:.1f} ms left)"
            )
        elif (
            predicted > self._safety * self.config.p99_s
            and queued_rows + rows > self.decision.cap_rows
        ):
            # Only a request queued behind a whole batch is refused for the budget: one that
            # joins the next batch waits for the running one at most, and refusing it would
            # make no one faster. Where latency is over the budget for reasons no queue
            # explains (a noisy machine, a budget under what a lone batch takes), refusing
            # those would only throw answers away.
            reason = "budget"
            message = (
                f"predicted to finish in {predicted * 1e3:.1f} ms, over the model's p99 "
                f"budget of {self.config.p99_s * 1e3:g} ms"
            )
        else:
            self._admitted_ns = now_ns
            return plan
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self._refused_since_answer = True
        raise Overloaded(message, reason)
