"""Batch formation: when the next batch leaves, and which requests ride in it.

`next_batch()` is awaited only when an instance is free (the dispatcher holds one), so while all
instances are busy requests pile up and leave together. A batch leaves when the oldest request's
lane holds `max_batch_size` rows, or a preferred batch size worth of rows, or the oldest request
has waited `max_queue_delay_s` (counted from its arrival), whichever comes first.
"""

from __future__ import annotations

import asyncio

from common.errors import InvalidInput, QueueFull, ShuttingDown
from scheduler.batch import Batch
from scheduler.clock import Clock, monotonic_ns
from scheduler.config import BatchingConfig
from scheduler.queue import RequestQueue
from scheduler.request import InferenceRequest, set_exception_if_pending


class Batcher:
    def __init__(self, config: BatchingConfig, clock: Clock = monotonic_ns) -> None:
        self._config = config
        self._clock = clock
        self._queue = RequestQueue()
        self._wakeup = asyncio.Event()
        self._closed = False
        self._delay_ns = int(config.max_queue_delay_s * 1e9)
        self._largest_preferred = max(config.preferred_batch_sizes, default=0)

    @property
    def config(self) -> BatchingConfig:
        return self._config

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, request: InferenceRequest) -> None:
        """Queue `request` without waiting; refuse at once when that is impossible."""
        if self._closed:
            raise ShuttingDown("the model is shutting down")
        limit = self._config.max_queue_size
        if limit and len(self._queue) >= limit:
            raise QueueFull(f"Exceeds maximum queue size ({limit} requests waiting)")
        if self._config.max_batch_size and request.rows > self._config.max_batch_size:
            raise InvalidInput(
                f"request has {request.rows} rows, more than max_batch_size "
                f"{self._config.max_batch_size}"
            )
        request.enqueued_ns = self._clock()
        self._queue.push(request)
        self._wakeup.set()

    def poke(self) -> None:
        """Re-evaluate now (tests call this after moving a fake clock)."""
        self._wakeup.set()

    async def next_batch(self) -> Batch:
        """The next batch to run; waits for requests and for the delay window as needed."""
        while True:
            if self._closed:
                raise ShuttingDown("the model is shutting down")
            head = self._queue.oldest()
            if head is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            wait_ns = self._wait_before_leaving(head)
            if wait_ns <= 0:
                return self._take(head)
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=wait_ns / 1e9)
            except TimeoutError:
                pass

    def _wait_before_leaving(self, head: InferenceRequest) -> int:
        """0 when the batch led by `head` should leave now, else nanoseconds left to wait."""
        config = self._config
        if not config.batched:
            return 0
        rows = self._queue.rows(head.batch_key)
        if rows >= config.max_batch_size:
            return 0
        if self._largest_preferred and rows >= self._largest_preferred:
            return 0
        return head.enqueued_ns + self._delay_ns - self._clock()

    def _take(self, head: InferenceRequest) -> Batch:
        config = self._config
        if not config.batched:
            return Batch(self._queue.take(head.batch_key, max_rows=head.rows, max_requests=1))
        rows = self._queue.rows(head.batch_key)
        limit = config.max_batch_size
        if config.preferred_batch_sizes and rows < limit:
            fitting = [p for p in config.preferred_batch_sizes if p <= rows]
            if fitting:
                limit = max(fitting)
        return Batch(self._queue.take(head.batch_key, max_rows=limit))

    def close(self, exc: BaseException) -> None:
        """Stop forming batches; every waiting request fails with `exc`."""
        self._closed = True
        for request in self._queue.drain():
            set_exception_if_pending(request.future, exc)
        self._wakeup.set()
