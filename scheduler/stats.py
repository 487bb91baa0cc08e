"""Cumulative statistics of one model version, in the shape of Triton's ModelStatistics.

Plain integers updated on the event loop only (no locks needed). inference_count counts rows,
execution_count counts batch executions; per-request durations count once per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ferry.engines.base import Timings


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += max(ns, 0)


@dataclass
class BatchSizeStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batch_stats: dict[int, BatchSizeStats] = field(default_factory=dict)
    isolated_batches: int = 0  # failed batches of several requests, re-run to find culprits
    culprits: int = 0  # requests that failed when run on their own

    def record_execution(
        self, rows: int, requests: int, timings: Timings, wall_ms: int, parts: int | None = None
    ) -> None:
        """One batch ran: `rows` rows from `requests` requests, in `parts` queue entries.

        A split request's chunks are separate entries but one request: each chunk adds its
        batch's time to the request's compute, the request is counted once (with its first
        chunk), so the mean compute per request covers all of its chunks.
        """
        parts = requests if parts is None else parts
        self.execution_count += 1
        self.inference_count += rows
        self.last_inference_ms = wall_ms
        per_size = self.batch_stats.get(rows)
        if per_size is None:
            per_size = self.batch_stats[rows] = BatchSizeStats()
        # Durations are differences of a monotonic clock: never negative, so no clamping here.
        input_ns, infer_ns, output_ns = timings.input_ns, timings.infer_ns, timings.output_ns
        d = per_size.compute_input
        d.count, d.ns = d.count + 1, d.ns + input_ns
        d = per_size.compute_infer
        d.count, d.ns = d.count + 1, d.ns + infer_ns
        d = per_size.compute_output
        d.count, d.ns = d.count + 1, d.ns + output_ns
        # Every entry of the batch spent the batch's compute time.
        d = self.compute_input
        d.count, d.ns = d.count + requests, d.ns + input_ns * parts
        d = self.compute_infer
        d.count, d.ns = d.count + requests, d.ns + infer_ns * parts
        d = self.compute_output
        d.count, d.ns = d.count + requests, d.ns + output_ns * parts

    def record_queue(self, ns: int) -> None:
        self.queue.add(ns)

    def record_success(self, ns: int) -> None:
        self.success.add(ns)

    def record_failure(self, ns: int) -> None:
        self.fail.add(ns)
