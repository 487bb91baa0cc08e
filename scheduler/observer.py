"""What the scheduler tells the outside about each batch: one record per execution.

Tracing and metrics (telemetry/) observe batches through this hook, so the scheduler stays free
of any telemetry library. With no observer registered the runner skips the record entirely, and
what only some observers read (the padding ratio) is computed only when read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ferry.engines.base import Timings
from ferry.scheduler.batch import Batch
from ferry.scheduler.request import InferenceRequest
from ferry.scheduler.slo import Decision


@dataclass(slots=True)
class BatchRecord:
    """One batch execution. Times are monotonic nanoseconds (scheduler/clock.py).

    Observers only read it. Not frozen: one is made per batch, and a frozen dataclass pays an
    `object.__setattr__` call per field on creation."""

    model: str  # "name:version", whichever profile of the model ran the batch
    profile: int
    instance: str
    device: str
    batch_id: int
    batch: Batch
    started_ns: int
    finished_ns: int
    timings: Timings
    error: BaseException | None = None
    isolation: str = ""  # "batch": failed, its culprits looked for; "culprit": one found
    slo: Decision | None = None  # the latency controller's settings when the batch formed
    @property
    def name_and_version(self) -> tuple[str, str]:
        """`model` split at its last ':' (a model's name may hold one, its version does not)."""
        name, _, version = self.model.rpartition(":")
        return name, version

    @property
    def rows(self) -> int:
        return self.batch.rows

    @property
    def requests(self) -> Sequence[InferenceRequest]:
        return self.batch.requests

    @property
    def padding_ratio(self) -> float:
        return self.batch.padding_ratio()


class BatchObserver(Protocol):
    def batch_done(self, record: BatchRecord) -> None:
        """Called on the event loop after every batch; must not block or raise."""
        ...
