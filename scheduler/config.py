"""Batching and queueing options for one model (frozen; validated on construction).

Latency guarantee: a request waits in the queue at most `max_queue_delay_s` for company once an
instance is free; it then leaves with whatever batch has formed. While every instance is busy,
requests accumulate and leave together when one frees up, so load itself forms large batches.

Priorities follow Triton: levels 1..priority_levels, 1 is served first; a request's priority 0
means the model's default level. Each level has a queue policy (its own, or the default one).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from ferry.common.errors import InvalidInput
from ferry.scheduler.slo import SloConfig


class TimeoutAction(enum.Enum):
    """What happens to a request whose queue timeout passes before it starts."""

    REJECT = "REJECT"  # it fails at once with UNAVAILABLE "Request timeout expired"
    DELAY = "DELAY"  # it waits behind every request of its own and higher levels still in time


@dataclass(frozen=True)
class QueuePolicy:
    """How long and how many requests of one priority level may wait.

    default_timeout_s: longest time in the queue before `timeout_action`; 0 = no limit.
    allow_timeout_override: a request's own `timeout` parameter applies, but only to shorten the
        default (a request cannot buy itself more queue time than its level allows).
    max_queue_size: most requests of this level waiting at once; 0 = no bound on the count.
    """

    timeout_action: TimeoutAction = TimeoutAction.REJECT
    default_timeout_s: float = 0.0
    allow_timeout_override: bool = False
    max_queue_size: int = 0

    def __post_init__(self) -> None:
        if self.default_timeout_s < 0:
            raise ValueError(f"default timeout must be >= 0, got {self.default_timeout_s}")
        if self.max_queue_size < 0:
            raise ValueError(f"max_queue_size must be >= 0, got {self.max_queue_size}")

    def timeout_s(self, requested_s: float | None) -> float | None:
        """The queue timeout a request gets: None when it may wait without limit."""
        default = self.default_timeout_s or None
        if not self.allow_timeout_override or not requested_s:
            return default
        return requested_s if default is None else min(default, requested_s)


@dataclass(frozen=True)
class BatchingConfig:
    """How one model's requests are queued and grouped into batches.

    max_batch_size: most rows in one batch; 0 means the model has no batch dimension and runs
        each request alone. Range >= 0. Tuning: the model's best throughput batch size.
    dynamic: batch requests together (config.pbtxt `dynamic_batching`). Off: one request per
        batch, as Triton does without a dynamic_batching block.
    preferred_batch_sizes: row counts worth leaving for at once, without waiting out the delay.
        Each in 1..max_batch_size. Tuning: sizes the backend runs fastest (e.g. powers of two).
    max_queue_delay_s: how long the oldest request may wait for more rows once an instance is
        free. Default 0: leave at once with whatever has accumulated. Range >= 0. Tuning: raise
        it (e.g. 100-500 µs) when batches are small under light load and throughput matters more
        than the last fraction of a millisecond.
    priority_levels: number of priority levels (0 or 1: every request is equal).
    default_priority: the level of a request that names none (priority 0); 0 = the lowest.
    default_policy / priority_policies: queue policy of every level / of particular levels.
    preserve_ordering: answers leave in the order requests arrived, whatever order they finish.
    split_oversized: a request with more rows than a batch may hold is cut into chunks that batch
        like any others and are joined again in order. Off: such a request is refused.
    max_queue_bytes: most input bytes this model's queues may hold; 0 = no bound. Past it new
        requests are refused at once (UNAVAILABLE), so memory stays bounded under any load.
    reserved_instances: instances of each profile that run batches of the highest priority
        level (1) only, so a high-priority request never waits for a lower-level batch that is
        already running: the wait priorities alone cannot remove, since nothing preempts a
        running batch. Default 0. Needs priority_levels >= 2, and each profile keeps at least
        one instance for every level. Cost: a reserved instance idles while no high-priority
        request waits. Tuning: 1, when high-priority p99 matters more than peak throughput.
    slo: a p99 latency budget (scheduler/slo.py): the queue delay and batch cap then follow the
        load, within max_queue_delay_s when that is set, and requests that cannot make it are
        refused at once. None: the fixed settings above, as Triton.
    """

    max_batch_size: int = 0
    dynamic: bool = False
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_s: float = 0.0
    priority_levels: int = 0
    default_priority: int = 0
    default_policy: QueuePolicy = QueuePolicy()
    priority_policies: Mapping[int, QueuePolicy] = field(default_factory=dict)
    preserve_ordering: bool = False
    split_oversized: bool = True
    max_queue_bytes: int = 0
    reserved_instances: int = 0
    slo: SloConfig | None = None

    def __post_init__(self) -> None:
        if self.max_batch_size < 0:
            raise ValueError(f"max_batch_size must be >= 0, got {self.max_batch_size}")
        if self.max_queue_delay_s < 0:
            raise ValueError(f"max_queue_delay_s must be >= 0, got {self.max_queue_delay_s}")
        if self.max_queue_bytes < 0:
            raise ValueError(f"max_queue_bytes must be >= 0, got {self.max_queue_bytes}")
        for size in self.preferred_batch_sizes:
            if not 1 <= size <= max(self.max_batch_size, 1):
                raise ValueError(
                    f"preferred_batch_size {size} must be in 1..max_batch_size "
                    f"({self.max_batch_size})"
                )
        if self.dynamic and self.max_batch_size == 0 and self.preferred_batch_sizes:
            raise ValueError("preferred_batch_size needs max_batch_size > 0")
        if self.priority_levels < 0:
            raise ValueError(f"priority_levels must be >= 0, got {self.priority_levels}")
        if self.reserved_instances < 0:
            raise ValueError(f"reserved_instances must be >= 0, got {self.reserved_instances}")
        if self.reserved_instances and self.priority_levels < 2:
            raise ValueError(
                f"reserved_instances ({self.reserved_instances}) needs priority_levels >= 2, "
                f"got {self.priority_levels}"
            )
        if self.default_priority and not 1 <= self.default_priority <= self.priority_levels:
            raise ValueError(
                f"default_priority_level {self.default_priority} must be in "
                f"1..priority_levels ({self.priority_levels})"
            )
        for level in self.priority_policies:
            if not 1 <= level <= self.priority_levels:
                raise ValueError(
                    f"priority_queue_policy for level {level}: levels are "
                    f"1..priority_levels ({self.priority_levels})"
                )

    @property
    def batched(self) -> bool:
        """True when the model has a batch dimension and requests may share a batch."""
        return self.max_batch_size > 0 and self.dynamic

    @property
    def levels(self) -> int:
        """How many priority levels the queues keep (at least one)."""
        return max(self.priority_levels, 1)

    def level_of(self, priority: int) -> int:
        """The queue index (0 = served first) for a request's `priority` parameter.

        0 means the default level (the lowest when none is configured). A model without
        priority levels serves every request alike and ignores the parameter, as Triton does;
        a model with levels refuses a priority outside 1..priority_levels instead of guessing.
        """
        if self.priority_levels <= 1:
            return 0
        if priority == 0:
            priority = self.default_priority or self.priority_levels
        if not 1 <= priority <= self.priority_levels:
            raise InvalidInput(
                f"priority {priority} is outside the model's levels 1..{self.priority_levels} "
                "(1 is served first; 0 means the default level)"
            )
        return priority - 1

    def policy(self, level: int) -> QueuePolicy:
        """The queue policy of queue index `level` (see level_of)."""
        return self.priority_policies.get(level + 1, self.default_policy)
