"""Can loadtest/run.py describe the server, not itself?

    python -m bench.loadtest_capacity [--rounds 3] [--seconds 5]

Saturates Ferry's `echo` (1-row requests, closed loop, concurrency 64) from one client process
and from two, measuring requests/s and the CPU of the client processes and of the server. The
client describes the server when two processes get no more than one does (the one-process client
already keeps the server saturated) and the client uses less CPU than the server.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import ROOT, ferry, process_cpu_s, record, stop
from ferry.loadtest.processes import Plan, run
from ferry.loadtest.workload import Workload
from ferry.server.example_repo import write_example_repo


def measure(address: str, server_pid: int, processes: int, seconds: float) -> dict[str, Any]:
    plan = Plan(
        address,
        Workload("echo"),
        "closed",
        concurrency=64,
        duration_s=seconds,
        warmup_s=0.5,
        processes=processes,
    )
    server0 = process_cpu_s(server_pid)
    tally = run(plan)
    server_cpu = process_cpu_s(server_pid) - server0
    wall = seconds + 0.5  # the client's CPU spans its warm-up too
    return {
        "processes": processes,
        "requests_per_s": len(tally.latencies_s) / seconds,
        "client_cores": tally.cpu_s / wall,
        "server_cores": server_cpu / wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-capacity-"))
    write_example_repo(work / "models")
    server, address = ferry(work / "models", work / "ferry.log")
    rounds = []
    try:
        for _ in range(args.rounds):
            rounds.append([measure(address, server.pid, n, args.seconds) for n in (1, 2)])
    finally:
        stop(server)
    print(
        f"{'round':>5} {'processes':>9} {'requests/s':>11} {'client cores':>13} "
        f"{'server cores':>13}"
    )
    for i, pair in enumerate(rounds):
        for m in pair:
            print(
                f"{i + 1:>5} {m['processes']:>9} {m['requests_per_s']:>11.0f} "
                f"{m['client_cores']:>13.2f} {m['server_cores']:>13.2f}"
            )
    gain = [p[1]["requests_per_s"] / p[0]["requests_per_s"] for p in rounds]
    share = [p[0]["client_cores"] / p[0]["server_cores"] for p in rounds]
    print(
        f"two processes / one, requests/s: {np.median(gain):.2f} ({min(gain):.2f}-{max(gain):.2f})"
    )
    print(
        f"one-process client CPU / server CPU: {np.median(share):.2f} "
        f"({min(share):.2f}-{max(share):.2f})"
    )
    path = record("loadtest_capacity", vars(args), {"rounds": rounds})
    print(f"full results: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
