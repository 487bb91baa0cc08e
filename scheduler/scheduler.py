"""One model version's scheduler: the only object the server hands requests to.

    infer() ─► route to the smallest fitting profile ─► split if oversized ─► ProfileRunner
                                                                                 │
    answer ◄─ join chunks ◄─ wait for its turn (preserve_ordering) ◄─────────────┘

It owns what spans profiles: routing, priority levels and queue policies, splitting and joining
oversized requests, answer order, and the bound on bytes held in the queues. Each profile's
queue, batches and instances live in a ProfileRunner (scheduler/runner.py).

Early refusal by estimate: a request whose deadline will pass while it waits is not refused
speculatively from a guess of the queue ahead (estimates are noisy and would refuse requests that
could have made it). Instead time limits are enforced exactly: a request whose deadline has
passed on arrival is refused at once, one whose deadline passes while queued fails at that
moment, and one whose caller gives up leaves the queue at once. None is ever computed.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import defaultdict
from collections.abc import Coroutine, Sequence
from typing import Any

import numpy as np

from ferry.common.errors import DeadlineExceeded, EngineError, InvalidInput, QueueFull
from ferry.engines.base import Instance, Profile, Timings
from ferry.scheduler.batcher import Batcher
from ferry.scheduler.clock import MONOTONIC, Clock
from ferry.scheduler.config import BatchingConfig
from ferry.scheduler.loop_lag import LoopLag
from ferry.scheduler.observer import BatchObserver
from ferry.scheduler.request import InferenceRequest, InferenceResult
from ferry.scheduler.runner import ProfileRunner
from ferry.scheduler.shapes import Padding, route, smallest_first
from ferry.scheduler.stats import ModelStats


class ModelScheduler:
    """Runs one model version's requests in dynamic batches on its instances.

    Instances are grouped by the profile each is bound to; every profile with instances gets its
    own queue. `padding` marks inputs that may be padded so that requests of different lengths
    share a batch.
    """

    def __init__(
        self,
        name: str,
        instances: Sequence[Instance],
        config: BatchingConfig,
        *,
        padding: Padding | None = None,
        stats: ModelStats | None = None,
        clock: Clock = MONOTONIC,
        observers: Sequence[BatchObserver] = (),
        loop_lag: LoopLag | None = None,
    ) -> None:
        if not instances:
            raise ValueError(f"{name}: a scheduler needs at least one instance")
        self.name = name
        self.config = config
        self.stats = stats if stats is not None else ModelStats()
        self._padding = padding or Padding()
        self._now = clock.now
        self._batched_dim = config.max_batch_size > 0
        groups: dict[int, list[Instance]] = defaultdict(list)
        profiles: dict[int, Profile] = {}
        for instance in instances:
            groups[instance.profile.index].append(instance)
            profiles[instance.profile.index] = instance.profile
        self._profiles = smallest_first(list(profiles.values()))
        self._constrained = len(self._profiles) > 1 or any(p.ranges for p in self._profiles)
        batch_ids = itertools.count()
        self._runners = {
            index: ProfileRunner(
                f"{name}/profile{index}" if len(groups) > 1 else name,
                Batcher(
                    config,
                    profiles[index],
                    self._padding,
                    clock,
                    instances=len(members),
                    loop_lag=loop_lag,
                ),
                members,
                self.stats,
                clock,
                self._on_runner_failure,
                observers,
                batch_ids,
                reserved=config.reserved_instances,
                model=name,
            )
            for index, members in groups.items()
        }
        self._failure: BaseException | None = None
        # The loop the scheduler serves on, kept at start: on Python 3.11 every
        # asyncio.get_running_loop() makes a getpid() system call.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_release: asyncio.Future[None] | None = None

    @property
    def profiles(self) -> Sequence[Profile]:
        """Served profiles, smallest first."""
        return self._profiles

    @property
    def healthy(self) -> bool:
        """False once a pump died; the model then answers every request with an error."""
        return self._failure is None

    def num_enqueued(self) -> int:
        return sum(len(r.batcher) for r in self._runners.values())

    def queued_bytes(self) -> int:
        return sum(r.batcher.nbytes for r in self._runners.values())

    def queue_depths(self) -> dict[int, int]:
        """Requests waiting per profile index."""
        return {index: len(r.batcher) for index, r in self._runners.items()}

    def busy_ns(self) -> dict[str, int]:
        """Nanoseconds each instance has spent running batches since start."""
        return {name: ns for r in self._runners.values() for name, ns in r.busy_ns.items()}

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for runner in self._runners.values():
            runner.start()

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        rows: int,
        *,
        priority: int = 0,
        timeout_s: float | None = None,
        deadline_ns: int | None = None,
        request_id: str = "",
        nbytes: int | None = None,
        trace: object = None,
    ) -> InferenceResult:
        """Queue one request and wait for its rows; the only call the server makes per request.

        `priority` and `timeout_s` are the request's own parameters (0 / None: the model's
        defaults); `deadline_ns` is the caller's deadline on the monotonic clock. If the caller
        is cancelled (client gone, deadline hit) the request leaves the queue at once, or, if it
        is already in a running batch, its rows are simply dropped.
        """
        if self._failure is not None:
            raise EngineError(f"model {self.name} stopped serving after an internal error")
        now = self._now()
        if deadline_ns is not None and now >= deadline_ns:
            raise DeadlineExceeded("the request's deadline had passed when it arrived")
        config = self.config
        batched = self._batched_dim
        shapes = {n: a.shape[1:] if batched else a.shape for n, a in inputs.items()}
        profile = route(self._profiles, shapes, rows) if self._constrained else self._profiles[0]
        runner = self._runners[profile.index]
        level = config.level_of(priority)
        policy = config.policy(level)
        timeout = policy.timeout_s(timeout_s)
        size = nbytes if nbytes is not None else sum(a.nbytes for a in inputs.values())
        limit = config.max_queue_bytes
        if limit and self.queued_bytes() + size > limit:
            raise QueueFull(
                f"Exceeds maximum queue bytes: model {self.name} holds {self.queued_bytes()} "
                f"bytes of queued input, this request's {size} would pass its limit of {limit}"
            )
        loop = self._loop or asyncio.get_running_loop()
        key = self._padding.batch_key(shapes)

        def request(part: dict[str, np.ndarray], part_rows: int, index: int) -> InferenceRequest:
            return InferenceRequest(
                part,
                part_rows,
                key,
                loop.create_future(),
                shapes=shapes,
                level=level,
                nbytes=size * part_rows // max(rows, 1),
                deadline_ns=deadline_ns,
                queue_deadline_ns=None if timeout is None else now + int(timeout * 1e9),
                timeout_action=policy.timeout_action,
                id=request_id,
                chunk_index=index,
                trace=trace,
            )

        max_rows = runner.batcher.max_rows
        if batched and max_rows and rows > max_rows:
            if not config.split_oversized:
                raise InvalidInput(
                    f"request has {rows} rows, more than the {max_rows} a batch of "
                    f"{profile.describe()} may hold (splitting is off for this model)"
                )
            chunks = [
                request({k: a[start : start + n] for k, a in inputs.items()}, n, i)
                for i, (start, n) in enumerate(_chunks(rows, max_rows))
            ]
        else:
            chunks = [request(inputs, rows, -1)]
            if runner.serve_now(chunks[0]):  # an idle model: answered in this task, no queue
                if not config.preserve_ordering:
                    return chunks[0].future.result()
                return await self._in_arrival_order(_wait(chunks))
        accepted: list[InferenceRequest] = []
        try:
            for chunk in chunks:
                runner.batcher.submit(chunk)
                accepted.append(chunk)
        except BaseException:
            for chunk in accepted:
                chunk.future.cancel()
            raise
        if not config.preserve_ordering:
            return await _wait(chunks)
        return await self._in_arrival_order(_wait(chunks))

    async def _in_arrival_order(
        self, work: Coroutine[Any, Any, InferenceResult]
    ) -> InferenceResult:
        """Await `work`, then hold the answer until every earlier request has been answered."""
        previous = self._last_release
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._last_release = mine
        error: BaseException | None = None
        result: InferenceResult | None = None
        try:
            result = await work
        except asyncio.CancelledError:
            _release_after(previous, mine)
            raise
        except BaseException as exc:  # answered with an error: still in its turn
            error = exc
        try:
            if previous is not None and not previous.done():
                await asyncio.shield(previous)
        finally:
            _release_after(previous, mine)
        if error is not None:
            raise error
        assert result is not None
        return result

    def _on_runner_failure(self, exc: BaseException) -> None:
        self._failure = exc
        for runner in self._runners.values():
            runner.batcher.close(
                EngineError(f"model {self.name} stopped serving after an internal error")
            )

    async def stop(self) -> None:
        """Refuse new work, fail what waits, cancel running batches, close the instances."""
        for runner in self._runners.values():
            await runner.stop()


def _chunks(rows: int, size: int) -> list[tuple[int, int]]:
    """(start, rows) of each chunk: as few as possible, the same size give or take one row."""
    count = math.ceil(rows / size)
    base, extra = divmod(rows, count)
    spans, start = [], 0
    for i in range(count):
        n = base + (1 if i < extra else 0)
        spans.append((start, n))
        start += n
    return spans


async def _wait(chunks: list[InferenceRequest]) -> InferenceResult:
    """The request's result; a split request's chunks joined back in row order.

    The first chunk to fail fails the request and the other chunks are withdrawn (left in the
    queue they are skipped; in a running batch their rows are dropped).
    """
    futures = [c.future for c in chunks]
    if len(futures) == 1:
        try:
            return await futures[0]
        except asyncio.CancelledError:
            futures[0].cancel()
            raise
    try:
        await asyncio.wait(futures, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        for future in futures:
            future.cancel()
        raise
    for future in futures:
        error = future.exception() if future.done() and not future.cancelled() else None
        if error is not None:
            for other in futures:
                other.cancel()
            raise error
    parts = [f.result() for f in futures]
    first = parts[0]
    return InferenceResult(
        {name: np.concatenate([p.outputs[name] for p in parts]) for name in first.outputs},
        max(p.queue_ns for p in parts),
        Timings(
            sum(p.timings.input_ns for p in parts),
            sum(p.timings.infer_ns for p in parts),
            sum(p.timings.output_ns for p in parts),
        ),
        max(p.batch_rows for p in parts),
        parts[-1].batch_id,
        min(p.started_ns for p in parts),
        max(p.finished_ns for p in parts),
    )


def _release_after(previous: asyncio.Future[None] | None, mine: asyncio.Future[None]) -> None:
    """Let the next request go once `previous` has gone (now, if it already has)."""

    def release(_: object = None) -> None:
        if not mine.done():
            mine.set_result(None)

    if previous is None or previous.done():
        release()
    else:
        previous.add_done_callback(release)
