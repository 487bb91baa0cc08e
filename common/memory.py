"""The process's memory: how much it may use (the smallest of the host's memory and the limits of
the control groups it runs in, a container's memory limit, read once), and keeping what it frees
from staying in its RSS (glibc's arenas).

A container often gets far less than the host has, and a budget sized from the host's memory
would let the kernel's OOM killer end the server before Ferry refuses a single request.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


def usable_memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Bytes this process may use; 0 when nothing can be read (not Linux)."""
    found: list[int] = []
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for path in _LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (v2) or a huge number (v1) mean no limit
            found.append(int(text))
    return min(found, default=0)


def release_freed_memory() -> None:
    """Hand memory the process has freed back to the system (glibc's malloc_trim): after a
    model is unloaded, its sessions' freed arenas otherwise stay in the process's RSS, and
    repeated reloads would grow it. A no-op where glibc is not the allocator."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """Cap glibc's malloc arenas (what MALLOC_ARENA_MAX sets), unless the environment already
    does. glibc gives threads arenas of their own, up to eight per core; memory freed in them
    (a model's sessions, when it is unloaded) stays fragmented there, so repeated reloads grow
    the RSS. Two arenas keep it flat (bench/model_reload.py). Called before threads start."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        pass
