"""One caller's request as the scheduler holds it, and the answer it gets back."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from ferry.engines.base import Timings
from ferry.scheduler.config import TimeoutAction
from ferry.scheduler.shapes import Shapes


@dataclass
class InferenceResult:
    """The caller's own rows of every output, and where its time went."""

    outputs: dict[str, np.ndarray]
    queue_ns: int
    timings: Timings
    batch_rows: int
    batch_id: int = -1
    started_ns: int = 0  # monotonic: when its (first) batch started
    finished_ns: int = 0  # monotonic: when its (last) batch finished


@dataclass(eq=False)
class InferenceRequest:
    """Inputs already validated against the model: arrays whose first dim is `rows`.

    `batch_key` says which requests may share a batch (equal shapes, padded axes aside);
    `shapes` are the non-batch shapes (used to pad a batch); `level` is the priority queue index
    (0 first). The caller awaits `future`, which the scheduler completes exactly once.

    A chunk of a split request has `chunk_index` >= 0; only chunk 0 counts in per-request
    statistics, so a split request counts once.
    """

    inputs: dict[str, np.ndarray]
    rows: int
    batch_key: Hashable
    future: asyncio.Future[InferenceResult]
    shapes: Shapes = field(default_factory=dict)
    level: int = 0
    nbytes: int = 0
    deadline_ns: int | None = None  # monotonic; the caller's deadline; None = none
    queue_deadline_ns: int | None = None  # monotonic; the queue policy's timeout; None = none
    timeout_action: TimeoutAction = TimeoutAction.REJECT
    enqueued_ns: int = 0
    planned_s: float = 0.0  # the latency controller's raw prediction at admission; 0.0: none
    id: str = ""
    chunk_index: int = -1
    trace: object = None  # the caller's span context, opaque here (batch observers link it)

    def expired(self, now_ns: int) -> bool:
        return self.deadline_ns is not None and now_ns >= self.deadline_ns

    @property
    def counts(self) -> bool:
        """Whether this entry stands for a caller's request in per-request statistics."""
        return self.chunk_index <= 0


def set_result_if_pending(future: asyncio.Future[InferenceResult], result: InferenceResult) -> None:
    """Complete `future` unless its caller already went away (cancelled) or it is done."""
    if not future.done():
        future.set_result(result)


def set_exception_if_pending(future: asyncio.Future[InferenceResult], exc: BaseException) -> None:
    """Fail `future` unless it is already done; a cancelled caller is never failed twice."""
    if not future.done():
        future.set_exception(exc)
