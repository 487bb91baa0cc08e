"""Capture: a sample of real request inputs, per model, written as `.npz` files for
`ferry build --calibration` (INT8 calibration that matches production traffic).

Off by default (`--capture DIR`). On the event loop a request costs one random draw; a sampled
one (`--capture-sample`) costs a copy of its inputs (they may be views into a caller's buffer
or a shared-memory region that changes after the answer), and a bounded queue hands the copy to
a writer thread, which writes `DIR/<model>/<time>-<pid>-<n>.npz`. The bytes taken are counted
when a request is sampled: at `--capture-max-bytes` (per server process) capture stops, and a
full queue drops samples rather than ever making a request wait.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

log = logging.getLogger("ferry.capture")

QUEUE_SAMPLES = 64
"""Samples waiting for the writer at most; more are dropped (and counted)."""


@dataclass(frozen=True)
class CaptureConfig:
    directory: Path
    sample: float = 0.01  # share of requests captured
    max_bytes: int = 1 << 30  # of input data, over the server's life

    def __post_init__(self) -> None:
        if not 0.0 < self.sample <= 1.0:
            raise ValueError(f"capture sample must be in (0, 1], got {self.sample}")
        if self.max_bytes < 1:
            raise ValueError(f"capture max bytes must be >= 1, got {self.max_bytes}")


class Capture:
    def __init__(self, config: CaptureConfig) -> None:
        self.config = config
        self.taken_bytes = 0
        self.dropped = 0  # sampled while the writer was behind
        self.written = 0
        self._queue: queue.Queue[tuple[str, dict[str, np.ndarray]] | None] = queue.Queue(
            QUEUE_SAMPLES
        )
        self._writer = threading.Thread(target=self._write, name="ferry-capture", daemon=True)
        self._writer.start()

    def offer(self, model: str, inputs: Mapping[str, np.ndarray]) -> None:
        """Maybe keep this request's inputs (called on the loop for every decoded request)."""
        config = self.config
        if config.sample < 1.0 and random.random() >= config.sample:
            return
        size = sum(a.nbytes for a in inputs.values())
        if self.taken_bytes + size > config.max_bytes:
            return
        arrays = {name: np.array(array, copy=True) for name, array in inputs.items()}
        try:
            self._queue.put_nowait((model, arrays))
        except queue.Full:
            self.dropped += 1
            return
        self.taken_bytes += size

    def close(self) -> None:
        """Write what is queued, then stop the writer (a blocking join: call off the loop)."""
        self._queue.put(None)
        self._writer.join()

    def _write(self) -> None:
        while (item := self._queue.get()) is not None:
            model, arrays = item
            folder = self.config.directory / model
            try:
                folder.mkdir(parents=True, exist_ok=True)
                name = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{self.written:06d}"
                partial = folder / f".{name}.npz"
                with partial.open("wb") as handle:
                    np.savez(handle, **cast("dict[str, Any]", arrays))
                partial.rename(folder / f"{name}.npz")  # a build never reads half a file
                self.written += 1
            except OSError as exc:
                log.error("capture for model %s could not write to %s: %s", model, folder, exc)
