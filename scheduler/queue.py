"""Waiting requests of one profile: priority slots, each with one FIFO lane per batch key.

Slots are served in order: level 1 in time, level 1 delayed, level 2 in time, level 2 delayed,
and so on. A request whose queue timeout passed under action DELAY moves to its level's delayed
slot, so it waits behind every request of its own and higher levels still in time (Triton's
rule) but keeps its place ahead of lower levels. A batch holds requests of one level only, so a
high-priority request never waits for, nor computes alongside, a batch-load of lower ones.

Requests with different batch keys can never share a batch, so each key gets its own lane; forming
a batch costs O(requests taken), never a scan over incompatible requests. A request that leaves
early (cancelled, timed out, moved) stays in its lane as a stale entry and is skipped when it
reaches the front, so removal is O(1).
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Hashable

from ferry.scheduler.request import InferenceRequest


class RequestQueue:
    def __init__(self, levels: int = 1) -> None:
        self._slots: list[dict[Hashable, deque[InferenceRequest]]] = [{} for _ in range(2 * levels)]
        self._where: dict[InferenceRequest, int] = {}  # live request -> its slot
        self._rows: dict[tuple[int, Hashable], int] = {}  # (level, key) -> rows waiting
        self._per_level = [0] * levels
        self._per_slot = [0] * (2 * levels)
        self.nbytes = 0
        self.total_rows = 0  # rows waiting, every level and key

    def __len__(self) -> int:
        """Requests waiting (those that left early excluded)."""
        return len(self._where)

    def __contains__(self, request: InferenceRequest) -> bool:
        return request in self._where

    def waiting_at(self, level: int) -> int:
        """Requests waiting at priority queue index `level`."""
        return self._per_level[level]

    def push(self, request: InferenceRequest) -> None:
        self._append(request, 2 * request.level)
        lane = (request.level, request.batch_key)
        self._rows[lane] = self._rows.get(lane, 0) + request.rows
        self.total_rows += request.rows
        self._per_level[request.level] += 1
        self.nbytes += request.nbytes
        request.future.add_done_callback(functools.partial(self._on_done, request))

    def _append(self, request: InferenceRequest, slot: int) -> None:
        lane = self._slots[slot].get(request.batch_key)
        if lane is None:
            lane = self._slots[slot][request.batch_key] = deque()
        lane.append(request)
        previous = self._where.get(request)
        if previous is not None:
            self._per_slot[previous] -= 1
        self._where[request] = slot
        self._per_slot[slot] += 1

    def delay(self, request: InferenceRequest) -> None:
        """Move a waiting request behind the in-time requests of its level (action DELAY)."""
        slot = self._where.get(request)
        if slot is not None and slot % 2 == 0:
            self._append(request, slot + 1)

    def remove(self, request: InferenceRequest) -> None:
        """Take a request out of the counts now (it failed or was answered while waiting)."""
        slot = self._where.pop(request, None)
        if slot is not None:
            self._per_slot[slot] -= 1
            self._rows[(request.level, request.batch_key)] -= request.rows
            self.total_rows -= request.rows
            self._per_level[request.level] -= 1
            self.nbytes -= request.nbytes

    def _on_done(self, request: InferenceRequest, _future: object) -> None:
        self.remove(request)

    def rows(self, level: int, key: Hashable) -> int:
        """Rows waiting at priority queue index `level` with batch key `key`."""
        return self._rows.get((level, key), 0)

    def _front(self, slot: int, key: Hashable) -> InferenceRequest | None:
        lane = self._slots[slot].get(key)
        while lane:
            if self._where.get(lane[0]) == slot:
                return lane[0]
            lane.popleft()
        if lane is not None:
            del self._slots[slot][key]
        return None

    def head(self, levels: int | None = None, skip: int = 0) -> InferenceRequest | None:
        """The request to serve next: the oldest of the first slot that holds any; with
        `levels`, among the first `levels` priority levels only; `skip`: past the first `skip`
        levels."""
        slots = self._slots if levels is None else self._slots[: 2 * levels]
        for slot, lanes in enumerate(slots[2 * skip :], start=2 * skip):
            best: InferenceRequest | None = None
            for key in list(lanes):
                front = self._front(slot, key)
                if front is not None and (best is None or front.enqueued_ns < best.enqueued_ns):
                    best = front
            if best is not None:
                return best
        return None

    def oldest(self, level: int, key: Hashable) -> InferenceRequest | None:
        """The longest-waiting request at `level` with batch key `key`."""
        best: InferenceRequest | None = None
        for slot in (2 * level, 2 * level + 1):
            front = self._front(slot, key)
            if front is not None and (best is None or front.enqueued_ns < best.enqueued_ns):
                best = front
        return best

    def take(self, level: int, key: Hashable, max_rows: int) -> list[InferenceRequest]:
        """Pop requests of `level` with batch key `key`, in-time before delayed, FIFO, while rows
        fit.

        The first is always taken (the caller made sure one request fits a batch). Stops at the
        first request that does not fit, so no request is overtaken by a later one of its slot,
        and takes delayed requests only when no in-time request of the level is left waiting.
        """
        taken: list[InferenceRequest] = []
        rows = 0
        for slot in (2 * level, 2 * level + 1):
            while (front := self._front(slot, key)) is not None:
                if taken and rows + front.rows > max_rows:
                    return taken
                self._slots[slot][key].popleft()
                self.remove(front)
                taken.append(front)
                rows += front.rows
            if self._per_slot[slot]:
                return taken
        return taken

    def take_one(self, request: InferenceRequest) -> list[InferenceRequest]:
        """Pop exactly `request` (a model without batching runs requests one by one)."""
        slot = self._where[request]
        lane = self._slots[slot][request.batch_key]
        if lane[0] is request:
            lane.popleft()
        self.remove(request)
        return [request]

    def drain(self) -> list[InferenceRequest]:
        """Remove and return every waiting request (used when the model stops)."""
        live = list(self._where)
        for request in live:
            self.remove(request)
        for lanes in self._slots:
            lanes.clear()
        return live
