"""Batching options for one model (frozen; validated on construction).

Latency guarantee: a request waits in the queue at most `max_queue_delay_s` for company once an
instance is free; it then leaves with whatever batch has formed. While every instance is busy,
requests accumulate and leave together when one frees up, so load itself forms large batches.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchingConfig:
    """How one model's requests are grouped into batches.

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
    max_queue_size: most requests waiting for this model; past it new ones are refused at once
        with UNAVAILABLE. 0 = no bound on the count.
    """

    max_batch_size: int = 0
    dynamic: bool = False
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_s: float = 0.0
    max_queue_size: int = 0

    def __post_init__(self) -> None:
        if self.max_batch_size < 0:
            raise ValueError(f"max_batch_size must be >= 0, got {self.max_batch_size}")
        if self.max_queue_delay_s < 0:
            raise ValueError(f"max_queue_delay_s must be >= 0, got {self.max_queue_delay_s}")
        if self.max_queue_size < 0:
            raise ValueError(f"max_queue_size must be >= 0, got {self.max_queue_size}")
        for size in self.preferred_batch_sizes:
            if not 1 <= size <= max(self.max_batch_size, 1):
                raise ValueError(
                    f"preferred_batch_size {size} must be in 1..max_batch_size "
                    f"({self.max_batch_size})"
                )
        if self.dynamic and self.max_batch_size == 0 and self.preferred_batch_sizes:
            raise ValueError("preferred_batch_size needs max_batch_size > 0")

    @property
    def batched(self) -> bool:
        """True when the model has a batch dimension and requests may share a batch."""
        return self.max_batch_size > 0 and self.dynamic
