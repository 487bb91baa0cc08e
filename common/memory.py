"""How much memory this process may use: the smallest of the host's memory and the limits of the
control groups it runs in (a container's memory limit), read once.

A container often gets far less than the host has, and a budget sized from the host's memory
would let the kernel's OOM killer end the server before Ferry refuses a single request.
"""

from __future__ import annotations

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
