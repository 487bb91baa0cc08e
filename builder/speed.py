"""The speed report: rows per second of the built model against its source, on this host, in
the same run, at the batch sizes the model serves. Each pair is measured in alternating slices
so that a change in the machine's load falls on both."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ferry.builder.gate import session
from ferry.builder.samples import Samples

SLICES = 4
"""Alternating slices per model and batch size."""


@dataclass(frozen=True)
class SpeedRow:
    batch: int
    source_rows_s: float
    built_rows_s: float

    @property
    def ratio(self) -> float:
        return self.built_rows_s / self.source_rows_s

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def measure(
    source: Path,
    built: Path,
    samples: Samples,
    batch_sizes: Sequence[int],
    seconds: float,
    threads: int,
) -> list[SpeedRow]:
    models = (session(source, threads), session(built, threads))
    rows = []
    for size in batch_sizes:
        index = np.arange(size) % samples.rows
        feed = next(samples.take(index).batches(size))
        rows_done = [0, 0]
        spent = [0.0, 0.0]
        for which in (0, 1):
            models[which].run(None, feed)  # first run: allocations
        for _ in range(SLICES):
            for which in (0, 1):
                started = time.perf_counter()
                while time.perf_counter() - started < seconds / SLICES:
                    models[which].run(None, feed)
                    rows_done[which] += size
                spent[which] += time.perf_counter() - started
        rows.append(SpeedRow(size, rows_done[0] / spent[0], rows_done[1] / spent[1]))
    return rows


def table(rows: Sequence[SpeedRow], threads: int) -> str:
    lines = [
        f"rows/s on this host, {threads} intra-op thread(s) per session",
        f"{'batch':>6} {'source':>12} {'built':>12} {'ratio':>7}",
    ]
    lines += [
        f"{r.batch:>6} {r.source_rows_s:>12,.0f} {r.built_rows_s:>12,.0f} {r.ratio:>6.2f}x"
        for r in rows
    ]
    return "\n".join(lines)
