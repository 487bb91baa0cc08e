"""One profile's runner: its batcher, its instances, and the pump between them.

    submit() ──► Batcher (queue + batch formation) ──► pump ──► one task per batch ──► Instance
                                                        ▲                                │
                                                        └──── instance back to the pool ◄┘

The pump takes a free instance, then the next batch, and starts a task to run it; it never
awaits engine work itself. An instance whose `run_now` takes the batch (batches small enough to
run on the event loop: the CPU backend's tiny batches) is run by the pump directly, without a
task. And
while a pump waits for work holding an idle instance, a request that would leave alone at once
is answered by `serve_now` in the caller's own task, with no queue in between.
Instances reserved for the highest priority level (`reserved_instances`) have a pool and a pump
of their own that take batches of that level only. An instance that can hold several batches at
once (its `in_flight`, e.g. a GPU instance with two staging slots) is in its pool that many
times.
Every request's future is completed exactly once on every path: result, engine error,
deadline, cancellation or shutdown (see ../shared/docs/style.md).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from ferry.common.errors import DeadlineExceeded, EngineError, FerryError, ShuttingDown
from ferry.engines.base import ExecutionResult, Feed, Instance, Profile, Timings
from ferry.scheduler.batch import Batch
from ferry.scheduler.batcher import Batcher
from ferry.scheduler.clock import Clock
from ferry.scheduler.observer import BatchObserver, BatchRecord
from ferry.scheduler.request import (
    InferenceRequest,
    InferenceResult,
    set_exception_if_pending,
    set_result_if_pending,
)
from ferry.scheduler.slo import SloController
from ferry.scheduler.stats import ModelStats

log = logging.getLogger("ferry.scheduler")


class ProfileRunner:
    """Runs the batches of one profile's queue on the instances bound to that profile."""

    def __init__(
        self,
        name: str,
        batcher: Batcher,
        instances: Sequence[Instance],
        stats: ModelStats,
        clock: Clock,
        on_failure: Callable[[BaseException], None],
        observers: Sequence[BatchObserver] = (),
        batch_ids: Iterator[int] | None = None,
        reserved: int = 0,
        model: str | None = None,
    ) -> None:
        """`name` names this runner in logs (a model of several profiles has one per profile);
        `model` is what its batch records name (the model, "name:version"; default `name`)."""
        if not 0 <= reserved < len(instances):
            raise ValueError(
                f"{name}: reserved_instances {reserved} must leave at least one of the "
                f"profile's {len(instances)} instance(s) for every priority level"
            )
        self.name = name
        self._model = model or name
        self._observers = list(observers)
        self._batch_ids = batch_ids if batch_ids is not None else itertools.count()
        self.busy_ns: dict[str, int] = {i.name: 0 for i in instances}
        self._running: dict[str, int] = {i.name: 0 for i in instances}  # batches in flight
        self._busy_since: dict[str, int] = {i.name: 0 for i in instances}
        self._last_finished: dict[str, int] = {i.name: 0 for i in instances}
        self._devices = {i.name: str(i.device) for i in instances}
        # Each instance's `run_now`, looked up once, not per batch; None where it never runs.
        self._run_nows: dict[str, Callable[[Feed], ExecutionResult | None] | None] = {
            i.name: i.run_now if i.inline else None for i in instances
        }
        self.batcher = batcher
        self._instances = list(instances)
        self._stats = stats
        self._now = clock.now
        self._on_failure = on_failure
        self._batched = batcher.max_rows > 0
        kept = reserved_positions([i.profile.index for i in self._instances], reserved)
        self.reserved = tuple(i.name for n, i in enumerate(self._instances) if n in kept)
        self._idle: asyncio.Queue[Instance] = asyncio.Queue()
        self._idle_reserved: asyncio.Queue[Instance] = asyncio.Queue()
        self._home = {
            i.name: self._idle_reserved if i.name in self.reserved else self._idle
            for i in self._instances
        }
        self._tasks: set[asyncio.Task[None]] = set()
        self._pumps: list[asyncio.Task[None]] = []
        # The idle instance each pump holds while it waits for a batch, by the levels it takes.
        self._parked: dict[int | None, Instance] = {}

    @property
    def profile(self) -> Profile:
        return self.batcher.profile

    def start(self) -> None:
        depth = max((max(1, i.in_flight) for i in self._instances), default=1)
        for round_ in range(depth):  # interleaved: every instance gets a batch before a second
            for instance in self._instances:
                if round_ < max(1, instance.in_flight):
                    self._home[instance.name].put_nowait(instance)
        pools: list[tuple[asyncio.Queue[Instance], int | None, str]] = [(self._idle, None, "")]
        if self.reserved:
            pools.append((self._idle_reserved, 1, "-reserved"))
        for idle, levels, suffix in pools:
            pump = asyncio.create_task(
                self._run(idle, levels), name=f"ferry-pump-{self.name}{suffix}"
            )
            pump.add_done_callback(self._on_pump_done)
            self._pumps.append(pump)

    async def _run(self, idle: asyncio.Queue[Instance], levels: int | None) -> None:
        while True:
            instance = await idle.get()
            self._parked[levels] = instance
            try:
                batch = await self.batcher.next_batch(levels)
            except BaseException:
                idle.put_nowait(instance)
                raise
            finally:
                del self._parked[levels]
            self._dispatch(instance, batch, idle)
            del batch  # the pump waits for the next one: it must not hold this one's inputs

    def _dispatch(self, instance: Instance, batch: Batch, idle: asyncio.Queue[Instance]) -> None:
        """Run a batch the pump took: on the loop when the instance offers to, else in a task."""
        start_ns = self._now()
        live = self._admit(batch, start_ns)
        if live is None:  # every request left while it waited
            idle.put_nowait(instance)
            return
        feed = live.feed()
        ran = self._run_now(instance, live, feed, start_ns)
        if ran is True:
            idle.put_nowait(instance)
            return
        failed = ran if isinstance(ran, Exception) else None
        task = asyncio.create_task(self._execute(instance, live, feed, start_ns, failed))
        self._tasks.add(task)
        task.add_done_callback(self._on_batch_done)

    def serve_now(self, request: InferenceRequest) -> bool:
        """Answer `request` here and now, in the caller's task, when nothing could change its
        batch: the queue is empty, the request would leave alone at once anyway (no batching
        delay, or it fills a batch), and an instance its level may use is idle and offers to
        run it on the loop (`run_now`). Skips the queue, the pump and the batch task, a sizable
        share of a tiny request's latency (bench/serving_core.py's echo probe). True: its
        future is done.
        """
        if len(self.batcher) or not self.batcher.leaves_at_once(request):
            return False
        parked: Iterable[tuple[int | None, Instance]] = self._parked.items()
        if len(self._parked) > 1:  # a reserved instance first, as in the queue (Batcher)
            parked = sorted(parked, key=lambda item: item[0] is None)
        for levels, instance in parked:
            if levels is not None and request.level >= levels:
                continue  # a reserved instance: not this request's level
            if self._run_nows[instance.name] is None:
                continue
            now = self._now()
            if request.expired(now):
                return False  # the queue answers it (DEADLINE_EXCEEDED), like any other
            request.enqueued_ns = now
            batch = Batch([request])
            # The parked instance is idle and its pump suspended: nothing else can touch it
            # during this synchronous run.
            if not self._run_now(instance, batch, batch.feed(), now):
                return False  # too big to run on the loop: it queues like any other
            if self.batcher.slo is not None:  # an arrival all the same: the rate counts it
                self.batcher.slo.arrived(request.rows, now)
            if request.counts:
                self._stats.record_queue(0)
            return True
        return False

    def _admit(self, batch: Batch, now: int) -> Batch | None:
        """The batch without the requests whose callers left or whose deadline passed (those
        fail now); None when no request is left. Counts each admitted request's queue time."""
        live: list[InferenceRequest] = []
        for request in batch.requests:
            if request.future.done():
                continue
            if request.expired(now):
                set_exception_if_pending(
                    request.future,
                    DeadlineExceeded("the request's deadline passed while it was queued"),
                )
                continue
            live.append(request)
        if not live:
            return None
        for request in live:
            if request.counts:
                self._stats.record_queue(now - request.enqueued_ns)
        if len(live) == len(batch.requests):
            return batch
        return Batch(live, batch.padded, batch.padding)

    def _run_now(
        self, instance: Instance, batch: Batch, feed: Feed, start_ns: int
    ) -> bool | Exception:
        """Run the batch here, on the event loop, if the instance offers to (`run_now`: batches
        too small to be worth a thread hand-off). No task and no wake-ups: the pump finishes the
        batch and goes on. True: done. False: it must go through `run` in a task of its own.
        An exception: it failed with several requests aboard, and a task must find which of
        them made it fail (`_isolate`).

        The run is synchronous, so nothing else ran on the instance meanwhile: its busy time
        is counted from `start_ns` once it is known that the batch ran."""
        run_now = self._run_nows[instance.name]
        if run_now is None:
            return False
        try:
            result = run_now(feed)
        except Exception as exc:
            if len(batch.requests) > 1:
                return exc
            self._begin(instance, start_ns)
            self._settle(instance, batch, start_ns, None, exc)
            return True
        if result is None:
            return False
        self._begin(instance, start_ns)
        self._settle(instance, batch, start_ns, result, None)
        return True

    async def _execute(
        self,
        instance: Instance,
        batch: Batch,
        feed: Feed,
        start_ns: int,
        failed: Exception | None = None,
    ) -> None:
        """Run a batch in a task of its own (`failed`: it already failed on the loop)."""
        self._begin(instance, start_ns)
        try:
            try:
                if failed is not None:
                    raise failed
                result = await instance.run(feed)
            except asyncio.CancelledError:
                self._end(instance, self._now())
                _shut_down(batch.requests)
                raise
            except Exception as exc:
                if len(batch.requests) > 1:
                    try:
                        await self._isolate(instance, batch, start_ns, exc)
                    except asyncio.CancelledError:
                        _shut_down(batch.requests)
                        raise
                else:
                    self._settle(instance, batch, start_ns, None, exc)
                return
            self._settle(instance, batch, start_ns, result, None)
        finally:
            self._home[instance.name].put_nowait(instance)

    async def _isolate(
        self, instance: Instance, batch: Batch, start_ns: int, error: Exception
    ) -> None:
        """A batch of several requests failed: one bad request must not fail its batch-mates.

        The batch is run again in halves, and a half that fails in halves again, until each
        failing part is a single request: that culprit gets the backend's error, which names
        only its own data; every other request gets its answer. The search stops after
        `ISOLATION_BUDGET` (times the failed batch's own run, at least `ISOLATION_MIN_NS`);
        requests still unseparated then share an error that names no request's data.
        Requests whose callers left meanwhile are not run again."""
        finished = self._now()
        self._end(instance, finished)
        self._observe(
            instance,
            batch,
            next(self._batch_ids),
            start_ns,
            finished,
            None,
            EngineError(f"model {self.name}: a batch failed; looking for the request(s) at fault"),
            isolation="batch",
        )
        self._stats.isolated_batches += 1
        give_up_at = finished + max(ISOLATION_MIN_NS, ISOLATION_BUDGET * (finished - start_ns))
        parts = deque(_halves(batch))
        while parts:
            part = _pending(parts.popleft())
            if part is None:
                continue
            part_start = self._now()
            self._begin(instance, part_start)
            try:
                result = await instance.run(part.feed())
            except asyncio.CancelledError:
                self._end(instance, self._now())
                raise
            except Exception as exc:
                if len(part.requests) == 1:
                    self._stats.culprits += 1
                    self._settle(instance, part, part_start, None, exc, isolation="culprit")
                elif self._now() < give_up_at:
                    self._end(instance, self._now())
                    parts.extend(_halves(part))
                else:
                    unseparated = EngineError(
                        f"model {self.name} failed to run a batch, and the request(s) at fault "
                        "could not be told apart within the time allowed"
                    )
                    self._settle(instance, part, part_start, None, unseparated)
                continue
            self._settle(instance, part, part_start, result, None)

    def _begin(self, instance: Instance, start_ns: int) -> None:
        """Busy time is time with at least one batch in flight, however many overlap."""
        name = instance.name
        if not self._running[name]:
            self._busy_since[name] = start_ns
        self._running[name] += 1
        if self.batcher.slo is not None:
            self.batcher.slo.running += 1

    def _end(self, instance: Instance, finished_ns: int) -> None:
        name = instance.name
        self._last_finished[name] = max(self._last_finished[name], finished_ns)
        self._running[name] -= 1
        if self.batcher.slo is not None:
            self.batcher.slo.running -= 1
        if not self._running[name]:
            self.busy_ns[name] += finished_ns - self._busy_since[name]

    def _settle(
        self,
        instance: Instance,
        batch: Batch,
        start_ns: int,
        result: ExecutionResult | None,
        error: Exception | None,
        isolation: str = "",
    ) -> None:
        """Finish a batch that ran (`result`) or failed (`error`): busy time, every request's
        answer or error, statistics, observers. Completes every pending future on every path."""
        finished = self._now()
        # What the batch added to its instance's time: on an instance that holds several batches
        # at once (in_flight > 1) the part that overlaps the batch before it is that one's.
        held_from = max(start_ns, self._last_finished[instance.name])
        self._end(instance, finished)
        batch_id = next(self._batch_ids)
        answers: list[dict[str, np.ndarray]] = []
        if result is not None:
            try:
                answers = batch.scatter(result.outputs, self._batched)
            except Exception as exc:  # outputs that do not fit the batch
                error = exc
        if error is not None or result is None:
            if not isinstance(error, FerryError):
                log.error(
                    "%s: instance %s failed a batch", self.name, instance.name, exc_info=error
                )
                error = EngineError(
                    f"model {self.name} failed to run the batch: {type(error).__name__}"
                )
            for request in batch.requests:
                set_exception_if_pending(request.future, error)
            self._observe(instance, batch, batch_id, start_ns, finished, None, error, isolation)
            return
        rows = batch.rows
        self._stats.record_execution(
            rows,
            sum(1 for r in batch.requests if r.counts),
            result.timings,
            int(time.time() * 1000),
            parts=len(batch.requests),
        )
        for request, outputs in zip(batch.requests, answers, strict=True):
            set_result_if_pending(
                request.future,
                InferenceResult(
                    outputs,
                    start_ns - request.enqueued_ns,
                    result.timings,
                    rows,
                    batch_id,
                    start_ns,
                    finished,
                ),
            )
        slo = self.batcher.slo
        if slo is not None:
            self._teach(slo, batch, (finished - held_from) / 1e9, finished, result.timings)
        self._observe(instance, batch, batch_id, start_ns, finished, result.timings, None)

    def _teach(
        self, slo: SloController, batch: Batch, held_s: float, finished_ns: int, timings: Timings
    ) -> None:
        """Tell the latency controller what the batch took: its time on the instance (hand-offs
        and waits for a CPU included), the engine's share of it, each request's latency. After
        the answers, and guarded: a fault in the controller must not keep them from callers."""
        try:
            engine_s = (timings.input_ns + timings.infer_ns + timings.output_ns) / 1e9
            slo.batch_ran(batch.rows, held_s, finished_ns, engine_s)
            for request in batch.requests:
                latency_s = (finished_ns - request.enqueued_ns) / 1e9
                slo.answered(latency_s, request.planned_s, finished_ns)
        except Exception:
            log.exception("%s: the latency controller failed to learn from a batch", self.name)

    def _observe(
        self,
        instance: Instance,
        batch: Batch,
        batch_id: int,
        start_ns: int,
        finished_ns: int,
        timings: Timings | None,
        error: BaseException | None,
        isolation: str = "",
    ) -> None:
        if not self._observers:
            return
        record = BatchRecord(
            self._model,
            instance.profile.index,
            instance.name,
            self._devices[instance.name],
            batch_id,
            batch,
            start_ns,
            finished_ns,
            timings or Timings(),
            error,
            isolation,
            None if self.batcher.slo is None else self.batcher.slo.decision,
        )
        for observer in self._observers:
            try:
                observer.batch_done(record)
            except Exception:  # an observer's bug must never fail requests
                log.exception("%s: batch observer failed", self.name)

    def _on_batch_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            log.debug("%s: batch task cancelled", self.name)
        elif (exc := task.exception()) is not None:
            log.error("%s: batch task failed", self.name, exc_info=exc)

    def _on_pump_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None or isinstance(exc, ShuttingDown):
            return
        log.error("%s: scheduler pump died; failing every waiter", self.name, exc_info=exc)
        self._on_failure(exc)

    async def stop(self) -> None:
        """Fail what waits, cancel running batches, close the instances."""
        self.batcher.close(ShuttingDown("the server is shutting down"))
        tasks = [*self._pumps, *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for instance in self._instances:
            await instance.close()


ISOLATION_BUDGET = 20
"""How long the search for a failed batch's culprits may take, in runs of the failed batch."""

ISOLATION_MIN_NS = 1_000_000_000
"""The search's time allowed whatever the failed batch took. A tiny batch's run time would allow
too few re-runs to separate a few culprits from a full batch; and each re-run pays hand-offs
between threads whatever its size, which a busy machine makes slower: with a floor of tens of
milliseconds, a batch with many culprits on cores shared with other work ran out of time and
good requests failed with the culprits. Only a flood of failing requests, or an engine that
fails slowly, comes near this one."""


def _halves(batch: Batch) -> list[Batch]:
    """The batch's requests in two halves, in order (padding kept: the shapes still fit)."""
    requests = batch.requests
    middle = len(requests) // 2
    return [
        Batch(list(part), batch.padded, batch.padding)
        for part in (requests[:middle], requests[middle:])
        if part
    ]


def _pending(batch: Batch) -> Batch | None:
    """The batch without requests already answered (callers that left); None if none is left."""
    live = [r for r in batch.requests if not r.future.done()]
    if not live:
        return None
    return batch if len(live) == len(batch.requests) else Batch(live, batch.padded, batch.padding)


def _shut_down(requests: Iterable[InferenceRequest]) -> None:
    for request in requests:
        set_exception_if_pending(request.future, ShuttingDown("the server is shutting down"))


def reserved_positions(profiles: Sequence[int], reserved: int) -> set[int]:
    """Which instances, given each one's profile index in order, are reserved for the highest
    priority level: the last `reserved` of each profile's. The scheduler runs them so, and the
    repository gives them their resources; this is the one place that decides."""
    by_profile: dict[int, list[int]] = {}
    for position, profile in enumerate(profiles):
        by_profile.setdefault(profile, []).append(position)
    return {p for members in by_profile.values() for p in members[len(members) - reserved :]}

