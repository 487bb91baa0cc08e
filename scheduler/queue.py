"""Waiting requests of one model: one FIFO lane per batch key, oldest-first across lanes.

Requests with different non-batch shapes can never share a batch, so each shape gets its own
lane; forming a batch then costs O(requests taken), never a scan over incompatible requests.
A caller that cancels leaves the counts at once (its future's done-callback) and is skipped
when its lane is next popped, so removal is O(1).
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Hashable

from scheduler.request import InferenceRequest


class RequestQueue:
    def __init__(self) -> None:
        self._lanes: dict[Hashable, deque[InferenceRequest]] = {}
        self._rows: dict[Hashable, int] = {}
        self._queued: set[InferenceRequest] = set()

    def __len__(self) -> int:
        """Requests waiting (cancelled ones excluded)."""
        return len(self._queued)

    def push(self, request: InferenceRequest) -> None:
        key = request.batch_key
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = deque()
            self._rows[key] = 0
        lane.append(request)
        self._rows[key] += request.rows
        self._queued.add(request)
        request.future.add_done_callback(functools.partial(self._on_done, request))

    def _on_done(self, request: InferenceRequest, _future: object) -> None:
        self._forget(request)

    def _forget(self, request: InferenceRequest) -> None:
        """Drop a request from the counts (it was cancelled, failed, or taken)."""
        if request in self._queued:
            self._queued.discard(request)
            self._rows[request.batch_key] -= request.rows

    def rows(self, key: Hashable) -> int:
        """Rows waiting in lane `key`."""
        return self._rows.get(key, 0)

    def oldest(self) -> InferenceRequest | None:
        """The live request that has waited longest, or None when nothing waits."""
        best: InferenceRequest | None = None
        for key in list(self._lanes):
            lane = self._lanes[key]
            while lane and lane[0] not in self._queued:
                lane.popleft()
            if not lane:
                del self._lanes[key]
                del self._rows[key]
                continue
            if best is None or lane[0].enqueued_ns < best.enqueued_ns:
                best = lane[0]
        return best

    def take(
        self, key: Hashable, max_rows: int, max_requests: int | None = None
    ) -> list[InferenceRequest]:
        """Pop live requests of lane `key` in FIFO order while their rows fit in `max_rows`.

        The first live request is always taken (the caller checked it fits the model).
        """
        lane = self._lanes.get(key)
        taken: list[InferenceRequest] = []
        rows = 0
        while lane:
            request = lane[0]
            if request not in self._queued:
                lane.popleft()
                continue
            if taken and (rows + request.rows > max_rows or len(taken) == max_requests):
                break
            lane.popleft()
            self._forget(request)
            taken.append(request)
            rows += request.rows
            if max_requests is not None and len(taken) == max_requests:
                break
        return taken

    def drain(self) -> list[InferenceRequest]:
        """Remove and return every live request (used when the model stops)."""
        live = [r for lane in self._lanes.values() for r in lane if r in self._queued]
        for request in live:
            self._forget(request)
        self._lanes.clear()
        self._rows.clear()
        return live
