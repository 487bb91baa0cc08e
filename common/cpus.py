"""How many CPUs this process may use, and which one its front end runs on.

`os.cpu_count()` counts the host's CPUs. A sidecar usually gets fewer: a container's cpuset, or
`taskset`. ONNX Runtime sizes its default thread pool from the host as well, so a server pinned
to 2 of 16 cores would start 16 threads per instance and crowd out its own event loop. Ferry sizes
thread pools from the affinity mask instead. (A CFS quota without a cpuset is not seen here.)

The front end (the event loop and gRPC's own threads) runs on one CPU of the set, the compute
threads on all of them (`pin_front_end`, `widen_to_compute`). A request's way through the front
end is a chain of wake-ups between those threads; on one CPU each is a context switch, across
CPUs an interrupt to another core, which on a virtual machine costs more than Ferry's own work on
the request (bench/front_end_cost.py: echo at one request in flight).
"""

from __future__ import annotations

import os

_compute: frozenset[int] | None = None  # every CPU, once the front end is pinned to one


def usable_cpus() -> int:
    """The CPUs this process may compute on (its affinity mask, before the front end was
    pinned to one of them); at least 1."""
    if _compute is not None:
        return len(_compute)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity API on this platform (not Linux)
        return os.cpu_count() or 1


def pin_front_end() -> int | None:
    """Pin the calling thread (the one that will run the event loop, before it starts gRPC's
    threads, which inherit it) to the first CPU it may use; the CPU, or None where there is
    only one or no affinity API. Threads that compute call `widen_to_compute` first."""
    global _compute
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = frozenset(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    _compute = cpus
    front = min(cpus)
    os.sched_setaffinity(0, {front})
    return front


def widen_to_compute() -> None:
    """Let the calling thread run on every CPU the process may use (a no-op unless the front end
    was pinned): called first by each thread that computes, so that it and the threads it
    starts (ONNX Runtime's pools) do not inherit the front end's single CPU."""
    if _compute is not None:
        try:
            os.sched_setaffinity(0, _compute)
        except OSError:
            pass  # the CPU set shrank under us (a cpuset change): keep what we have
