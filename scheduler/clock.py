"""The scheduler's only source of time: a monotonic nanosecond clock that tests can replace."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], int]
"""Returns monotonic nanoseconds."""

monotonic_ns: Clock = time.monotonic_ns
