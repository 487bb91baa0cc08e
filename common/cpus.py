"""How many CPUs this process may run on.

`os.cpu_count()` counts the host's CPUs. A sidecar usually gets fewer: a container's cpuset, or
`taskset`. ONNX Runtime sizes its default thread pool from the host as well, so a server pinned
to 2 of 16 cores would start 16 threads per instance and crowd out its own event loop. Ferry sizes
thread pools from the affinity mask instead. (A CFS quota without a cpuset is not seen here.)
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs in this thread's affinity mask (threads it starts inherit it); at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity API on this platform (not Linux)
        return os.cpu_count() or 1
