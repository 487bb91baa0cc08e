"""The server's memory budget: what the requests it holds may cost, refused past it.

A request costs far more than its input bytes while Ferry holds it: gRPC's received message and
protobuf's copy of it, the batch buffer its rows are gathered into, the outputs and the encoded
answer, and the per-call bookkeeping of gRPC and asyncio. `cost` estimates all of it; a request
holds its cost from decoding until its answer is built, and one that would pass the budget is
refused at once with UNAVAILABLE (retryable). A message too big for what is left is refused
before it is decoded.

The default budget protects the process: an eighth of the memory it may use (common/memory.py),
at most `DEFAULT_MAX_BYTES`, so an overload answers a share of requests UNAVAILABLE quickly
instead of queueing them until memory runs out.
"""

from __future__ import annotations

from ferry.common.errors import QueueFull
from ferry.common.memory import usable_memory_bytes

CALL_OVERHEAD_BYTES = 32 * 1024
"""What one call costs besides its tensors: gRPC's call state and buffers, the task, coroutine
frames, futures and protobuf objects of the request's way through the server."""

DEFAULT_MAX_BYTES = 256 * 1024 * 1024


def default_budget_bytes() -> int:
    usable = usable_memory_bytes()
    return min(DEFAULT_MAX_BYTES, usable // 8) if usable else DEFAULT_MAX_BYTES


class MemoryBudget:
    """Bytes held by requests in flight, against a limit (0: no limit). Event loop only."""

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes < 0:
            raise ValueError(f"a memory budget must be >= 0, got {limit_bytes}")
        self.limit_bytes = limit_bytes
        self.held_bytes = 0

    @staticmethod
    def cost(message_bytes: int, output_bytes: int) -> int:
        """What a request costs while held: its input bytes twice (the decoded message, then its
        rows gathered into a batch buffer; before decoding, gRPC's received bytes), its outputs
        twice (the batch's and the encoded answer) and the call itself."""
        return 2 * message_bytes + 2 * output_bytes + CALL_OVERHEAD_BYTES

    def fits(self, nbytes: int) -> bool:
        return not self.limit_bytes or self.held_bytes + nbytes <= self.limit_bytes

    def hold(self, nbytes: int) -> None:
        """Hold `nbytes` for a request, or refuse it (QueueFull: UNAVAILABLE, retryable)."""
        if not self.fits(nbytes):
            raise QueueFull(
                f"Exceeds the server's memory budget: requests in flight hold {self.held_bytes} "
                f"bytes of {self.limit_bytes}, and this one would need {nbytes}"
            )
        self.held_bytes += nbytes

    def release(self, nbytes: int) -> None:
        self.held_bytes -= nbytes
