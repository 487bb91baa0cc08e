"""One caller's request as the scheduler holds it, and the answer it gets back."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from engines.base import Timings


@dataclass
class InferenceResult:
    """The caller's own rows of every output, and where its time went."""

    outputs: dict[str, np.ndarray]
    queue_ns: int
    timings: Timings
    batch_rows: int


@dataclass(eq=False)
class InferenceRequest:
    """Inputs already validated against the model: arrays whose first dim is `rows`.

    `batch_key` says which requests may share a batch (equal non-batch shapes); the caller
    awaits `future`, which the scheduler completes exactly once.
    """

    inputs: dict[str, np.ndarray]
    rows: int
    batch_key: Hashable
    future: asyncio.Future[InferenceResult]
    deadline_ns: int | None = None  # monotonic; None = no deadline
    enqueued_ns: int = 0
    id: str = ""

    def expired(self, now_ns: int) -> bool:
        return self.deadline_ns is not None and now_ns >= self.deadline_ns


def set_result_if_pending(future: asyncio.Future[InferenceResult], result: InferenceResult) -> None:
    """Complete `future` unless its caller already went away (cancelled) or it is done."""
    if not future.done():
        future.set_result(result)


def set_exception_if_pending(future: asyncio.Future[InferenceResult], exc: BaseException) -> None:
    """Fail `future` unless it is already done; a cancelled caller is never failed twice."""
    if not future.done():
        future.set_exception(exc)
