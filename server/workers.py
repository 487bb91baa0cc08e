"""Several worker processes on one port: `ferry serve --workers N`.

One Python process serves at most what one event loop and one GIL allow (docs/benchmarks.md:
the GPU pipeline stops scaling with instances inside one process). The supervisor starts N
workers, each a whole Ferry server, all listening on the same TCP port with SO_REUSEPORT, so the
kernel spreads connections over them. Worker i serves /metrics on metrics port + i (each picks
a free one when the port is 0). A Unix socket cannot be shared that way, so it is refused with
several workers.

The supervisor forwards SIGTERM/SIGINT to every worker (each drains as a single server does) and
exits when they have; if a worker dies on its own, it stops the others and exits non-zero, so the
orchestrator (systemd, Kubernetes) restarts the whole replica instead of serving with a hole.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger("ferry.server")


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
        processes.append(subprocess.Popen(command, env=environment))
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
