"""Who may come in, and who is still inside: how a draining server loses no accepted request.

On SIGTERM the server keeps serving while it drains. New inference requests are refused at once
with UNAVAILABLE (`ShuttingDown`, which clients retry elsewhere) instead of being cancelled by a
stopping transport; requests already accepted, queued or running finish; open streams stop
reading, answer what they read, then end with UNAVAILABLE. Only once nothing accepted is left
and no new call has arrived for a moment does the transport stop (server/app.py).
"""

from __future__ import annotations

import asyncio
import time

from ferry.common.errors import ShuttingDown


class Admission:
    def __init__(self) -> None:
        self.draining = False
        self._inside = 0
        self._empty: asyncio.Event | None = None
        self.last_arrival_ns = 0  # monotonic: when the last call (admitted or refused) came
        self._readers: set[asyncio.Task[None]] = set()

    @property
    def inside(self) -> int:
        """Accepted requests (and open streams) not yet answered."""
        return self._inside

    def enter(self) -> None:
        """Admit one request or stream, or refuse it (UNAVAILABLE) while draining."""
        if self.draining:
            self.last_arrival_ns = time.monotonic_ns()
            raise ShuttingDown("the server is shutting down; send the request to another replica")
        self._inside += 1

    def leave(self) -> None:
        self._inside -= 1
        if not self._inside and self._empty is not None:
            self._empty.set()

    def reading(self, reader: asyncio.Task[None]) -> None:
        """A stream's reader: draining stops it, so the stream reads no new request."""
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)

    def drain(self) -> None:
        """Refuse from now on, and stop every stream's reading. Calls already on their way count
        as arriving now: the quiet window (`settled`) starts here."""
        self.draining = True
        self.last_arrival_ns = time.monotonic_ns()
        for reader in list(self._readers):
            reader.cancel()

    async def settled(self, timeout_s: float, quiet_s: float) -> bool:
        """Wait until every admitted request is answered and no call has arrived for `quiet_s`
        (calls already on their way are answered, not cut off), at most `timeout_s`; True when
        that happened in time."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self._inside:
                self._empty = asyncio.Event()
                left = deadline - time.monotonic()
                try:
                    await asyncio.wait_for(self._empty.wait(), timeout=max(left, 0))
                except TimeoutError:
                    return False
                finally:
                    self._empty = None
            since = (time.monotonic_ns() - self.last_arrival_ns) / 1e9
            if since >= quiet_s and not self._inside:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(quiet_s - since, left) if since < quiet_s else 0)
