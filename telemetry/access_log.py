"""The structured access log: one JSON line per sampled request, written off the event loop.

Fields: time (UTC, ISO 8601), id, model, version, sha256 (of the model artifact), status (gRPC
status code name), rows, batch (batch id), queue_us, compute_us, total_us, and manifest_sha256
when `ferry build` made the version (builder/manifest.py). A logging
QueueHandler hands each line to a QueueListener thread, so the loop never waits on the disk.
"""

from __future__ import annotations

import datetime
import json
import logging
import logging.handlers
import queue
import random
from typing import Any


class AccessLog:
    def __init__(self, path: str, sample: float = 1.0) -> None:
        if not 0.0 < sample <= 1.0:
            raise ValueError(f"access log sample must be in (0, 1], got {sample}")
        self.sample = sample
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        target: logging.Handler = (
            logging.StreamHandler() if path == "-" else logging.FileHandler(path, encoding="utf-8")
        )
        target.setFormatter(logging.Formatter("%(message)s"))
        self._listener = logging.handlers.QueueListener(self._queue, target)
        self._logger = logging.Logger("ferry.access")  # not in the logging tree: never duplicated
        self._logger.addHandler(logging.handlers.QueueHandler(self._queue))
        self._listener.start()

    def wanted(self) -> bool:
        return self.sample >= 1.0 or random.random() < self.sample

    def write(self, entry: dict[str, Any]) -> None:
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")
        self._logger.info(json.dumps({"time": now, **entry}, separators=(",", ":")))

    def close(self) -> None:
        self._listener.stop()
