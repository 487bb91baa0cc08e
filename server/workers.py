"""Several worker processes on one port: `ferry serve --workers N`.

One Python process serves at most what one event loop and one GIL allow (docs/benchmarks.md: the GPU
pipeline stops scaling with instances inside one process). The supervisor starts N workers, each a
whole Ferry server pinned to its own share of the supervisor's CPUs (so each sizes its ONNX Runtime
threads from its share, and N workers never start N times the compute threads one would, fighting
over the same cores), all listening on the same TCP port with SO_REUSEPORT, so the kernel spreads
connections over them. Worker i serves /metrics on metrics port + i (each picks a free one when the
port is 0). A Unix socket cannot be shared that way, so it is refused with several workers.

The supervisor forwards SIGTERM/SIGINT to every worker (each drains as a single server does) and
exits when they have; if a worker dies on its own, it stops the others and exits non-zero, so the
orchestrator (systemd, Kubernetes) restarts the whole replica instead of serving with a hole.
If the supervisor itself dies without a word (SIGKILL, the OOM killer), each worker gets SIGTERM
from the kernel (Linux's parent-death signal) and drains: workers left behind would go on
serving the shared port beside the next supervisor's, with whatever models they had.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ferry.common.cpus import usable_cpus
from ferry.common.memory import usable_memory_bytes

log = logging.getLogger("ferry.server")


AUTO_MAX_WORKERS = 8
"""`--workers auto` starts one worker per CPU up to this many: each worker is a whole server
with every model in its own memory, and one event loop saturates about one core, so beyond a
worker per core more workers only cost memory."""

WORKER_BASE_BYTES = 128 * 1024 * 1024
"""What a worker holds besides its models: the interpreter, gRPC, ONNX Runtime's code, the
memory budget's share of requests in flight (an estimate; an idle worker with no model is
below it)."""

MODEL_MEMORY_FACTOR = 2
"""A loaded model's memory against its files: ONNX Runtime keeps the weights and, for some
operators, prepacked copies of them, and the session's buffers come on top."""

AUTO_MEMORY_SHARE = 0.5
"""The share of the memory the process may use that `--workers auto` lets its workers' models
and bases fill; the rest is for requests, page cache and the supervisor."""


def auto_workers(model_bytes: int = 0, memory_bytes: int | None = None) -> int:
    """How many workers `--workers auto` starts: one per CPU this process may use, at most
    AUTO_MAX_WORKERS, and no more than AUTO_MEMORY_SHARE of its memory holds (each worker
    loads every model: `model_bytes` of files, server/repository.py `serving_bytes`); at least
    one. `memory_bytes` None: what common/memory.py finds (0: unknown, no memory bound)."""
    count = min(AUTO_MAX_WORKERS, usable_cpus())
    memory = usable_memory_bytes() if memory_bytes is None else memory_bytes
    if memory:
        each = WORKER_BASE_BYTES + MODEL_MEMORY_FACTOR * model_bytes
        count = min(count, int(memory * AUTO_MEMORY_SHARE) // each)
    return max(1, count)


def cpu_shares(cpus: Sequence[int], workers: int) -> list[frozenset[int]]:
    """The CPUs each worker runs on: the supervisor's own, dealt out in contiguous, near-equal
    shares (more workers than CPUs: each CPU is shared by several). A worker sizes its thread
    pools from its share (common/cpus.py), so N workers together start as many compute threads
    as one would, instead of N times as many fighting over the same cores."""
    if not cpus:
        return []
    if workers >= len(cpus):
        return [frozenset({cpus[i % len(cpus)]}) for i in range(workers)]
    bounds = [len(cpus) * i // workers for i in range(workers + 1)]
    return [frozenset(cpus[bounds[i] : bounds[i + 1]]) for i in range(workers)]


PR_SET_PDEATHSIG = 1  # prctl(2)


class _ChildSetup:
    """Runs in the worker between fork and exec (Popen's preexec_fn): the parent-death signal,
    then the CPUs. Made in the supervisor, so that the child only makes system calls (no imports,
    no dlopen, which may take locks another thread of the parent held at the fork)."""

    def __init__(self, cpus: frozenset[int] | None) -> None:
        self._cpus = cpus
        self._parent = os.getpid()
        self._prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None

    def __call__(self) -> None:
        if self._prctl is not None:
            self._prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != self._parent:  # the supervisor died before the call above
                os.kill(os.getpid(), signal.SIGTERM)
        if self._cpus is not None:
            os.sched_setaffinity(0, self._cpus)  # every thread of the worker inherits it


def _free_port(host: str) -> tuple[socket.socket, int]:
    """A port for every worker to share. The socket holding it stays bound while the supervisor
    runs (bound, never listening, it takes no connections) so no other process can take it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host, 0))
    return holder, int(holder.getsockname()[1])


@dataclass(frozen=True)
class Ports:
    """The ports every worker shares (grpc, http; 0: one picked for all, < 0: off) and the first
    metrics port (worker i serves metrics on metrics + i)."""

    grpc: int
    http: int
    metrics: int


def supervise(
    argv: Sequence[str],
    workers: int,
    host: str,
    ports: Ports,
    devices: Sequence[str] = (),
) -> int:
    """Run `workers` copies of `ferry serve argv` on shared ports until a signal; return the code.

    With `devices` (GPU or MIG UUIDs, one per worker), worker i sees only devices[i]
    (CUDA_VISIBLE_DEVICES), which is how a CUDA process gets a MIG instance at all.
    """
    holders: list[socket.socket] = []
    port, http_port = ports.grpc, ports.http
    if port == 0:
        holder, port = _free_port(host)
        holders.append(holder)
    if http_port == 0:
        holder, http_port = _free_port(host)
        holders.append(holder)
    metrics_port = ports.metrics
    shares = cpu_shares(sorted(os.sched_getaffinity(0)), workers)
    processes: list[subprocess.Popen[bytes]] = []
    for index in range(workers):
        metrics = metrics_port if metrics_port <= 0 else metrics_port + index
        command = [
            sys.executable, "-m", "ferry", "serve", *argv,
            "--workers", "1", "--reuse-port",
            "--grpc-port", str(port), "--http-port", str(http_port),
            "--metrics-port", str(metrics),
        ]  # fmt: skip
        environment = dict(os.environ)
        if devices:
            environment["CUDA_VISIBLE_DEVICES"] = devices[index]
        share = shares[index] if shares else None
        processes.append(
            subprocess.Popen(
                command,
                env=environment,
                preexec_fn=_ChildSetup(share),
            )
        )
    log.info("supervisor: %d workers on %s:%d (pids %s)", workers, host, port,
             ", ".join(str(p.pid) for p in processes))  # fmt: skip
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        while True:
            codes = [p.poll() for p in processes]
            if all(code is not None for code in codes):
                return max((code or 0) for code in codes if code is not None)
            if not stopping and any(code is not None for code in codes):
                log.error("supervisor: a worker exited on its own (codes %s); stopping", codes)
                forward(signal.SIGTERM, None)
                for process in processes:
                    process.wait()
                return 1
            time.sleep(0.2)
    finally:
        for holder in holders:
            holder.close()
        for process in processes:
            if process.poll() is None:
                process.kill()
