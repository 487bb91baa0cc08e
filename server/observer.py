"""What the server tells the outside about each request: statistics, metrics, its trace span and
its access-log line, written in one place when the request ends.

The request-level twin of scheduler/observer.py (which reports batches). A front end opens a
request (`begin`: the span joins the caller's trace) and closes it once, whatever happened
(`end`); absent telemetry parts cost one `is None` test each.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ferry.scheduler.request import InferenceResult
from ferry.server.repository import ServedVersion
from ferry.telemetry.access_log import AccessLog
from ferry.telemetry.metrics import Metrics
from ferry.telemetry.tracing import Tracing


@dataclass(slots=True)
class RequestRecord:
    """One request from arrival to answer. `served` is None when no model version was found."""

    method: str
    model: str
    version: str
    request_id: str
    rows: int
    start_ns: int  # monotonic, when the front end received it
    span: Any = None  # the request's trace span, if it is traced
    served: ServedVersion | None = None


class RequestObserver:
    """Statistics always; tracing, metrics and the access log when the server has them."""

    def __init__(
        self,
        tracing: Tracing | None = None,
        metrics: Metrics | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self.tracing = tracing
        self.metrics = metrics
        self.access_log = access_log

    def begin(
        self,
        method: str,
        metadata: Sequence[tuple[str, Any]] | None,
        model: str,
        version: str,
        request_id: str,
        rows: int,
    ) -> RequestRecord:
        start = time.monotonic_ns()
        tracing = self.tracing
        span = (
            None
            if tracing is None
            else tracing.start_request(method, metadata, model, version, request_id)
        )
        return RequestRecord(method, model, version, request_id, rows, start, span)

    def end(
        self,
        record: RequestRecord,
        result: InferenceResult | None,
        error: BaseException | None,
        code: str,
    ) -> None:
        """`code`: the status the caller got, in its front end's words ("OK" on success)."""
        total = time.monotonic_ns() - record.start_ns
        served = record.served
        if served is not None:
            stats = served.scheduler.stats
            if error is None:
                stats.record_success(total)
            else:
                stats.record_failure(total)
            if self.metrics is not None:
                self.metrics.request_done(served.name, served.version, total, result, error)
        if record.span is not None and self.tracing is not None:
            enqueued = None if result is None else result.started_ns - result.queue_ns
            self.tracing.end_request(record.span, result, enqueued, error, code)
        log = self.access_log
        if log is not None and log.wanted():
            entry = {
                "id": record.request_id,
                "model": record.model,
                "version": served.version if served else record.version,
                "sha256": served.sha256 if served else "",
                "status": code,
                "rows": record.rows,
                "batch": -1 if result is None else result.batch_id,
                "queue_us": 0 if result is None else result.queue_ns // 1000,
                "compute_us": 0
                if result is None
                else (result.finished_ns - result.started_ns) // 1000,
                "total_us": total // 1000,
            }
            if served is not None and "manifest_sha256" in served.build:
                entry["manifest_sha256"] = served.build["manifest_sha256"]  # ferry build made it
            log.write(entry)
