"""Server CPU per request and latency at light load, Ferry built from several source trees.

A server spends most of its hours below capacity: a few requests in flight, batches that wait
out their queue delay. What a request costs the server there is not what it costs at
saturation (bench/front_end_cost.py): time spent waiting for a batch to fill must cost no CPU.
This script starts Ferry from each source tree (e.g. a `git worktree` of an earlier commit and
the working tree) on the example repository, pinned to the same CPUs, and drives each with
NVIDIA's perf_analyzer at a few requests in flight, the trees in turn and the order reversed
every other round, so that a noisy machine's drift hits every tree alike.

    python -m bench.light_load OLD_TREE . --perf-analyzer PA --cuda-runtime-lib LIB
        [--model dlrm] [--rows 1] [--shape x:16] [--in-flight 1,4] [--rounds 3] [--seconds 2]
        [--server-cpus 0 --client-cpus 1]

Prints server CPU per request (/proc, over each run) with p50/p99 per tree and load; writes JSON
under bench/results/.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.front_end_cost import Workload, measure
from bench.harness import ferry, perf_analyzer_options, record, stop
from ferry.server.example_repo import write_example_repo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trees", nargs="+", help="source trees to start Ferry from")
    perf_analyzer_options(parser)
    parser.add_argument("--model", default="dlrm")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--shape", default="", help='perf_analyzer --shape, e.g. "x:16" (echo)')
    parser.add_argument("--in-flight", default="1,4", help="loads, requests in flight")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="perf_analyzer window")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-light-load-"))
    repo = work / "models"
    write_example_repo(repo)
    loads = [int(n) for n in args.in_flight.split(",")]
    servers: dict[str, tuple[Any, str]] = {}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        for index, tree in enumerate(args.trees):
            log = work / f"ferry-{index}.log"
            servers[f"{index}:{tree}"] = ferry(
                repo, log, cpus=args.server_cpus, tree=Path(tree).resolve()
            )
        for round_index in range(args.rounds):
            for load in loads:
                workload = Workload(args.model, args.rows, load, args.shape)
                order = list(servers) if round_index % 2 == 0 else list(servers)[::-1]
                for name in order:
                    process, address = servers[name]
                    result = measure(
                        args.perf_analyzer, args.cuda_runtime_lib, process, address, workload,
                        work, args.seconds, client_cpus=args.client_cpus,
                    )  # fmt: skip
                    runs.setdefault(workload.name, {}).setdefault(name, []).append(result)
                    print(
                        f"round {round_index} {workload.name:18} {name:30}: "
                        f"{result['cpu_us_per_request']:6.0f} us CPU/request, "
                        f"p50 {result['p50_ms']:.3f} ms, p99 {result['p99_ms']:.3f} ms",
                        flush=True,
                    )
    finally:
        for process, _ in servers.values():
            stop(process)
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for workload_name, by_tree in runs.items():
        for name, results in by_tree.items():
            figures = {
                key: statistics.median(r[key] for r in results)
                for key in ("cpu_us_per_request", "p50_ms", "p99_ms", "rows_per_s")
            }
            cpu = [r["cpu_us_per_request"] for r in results]
            figures["cpu_min"], figures["cpu_max"] = min(cpu), max(cpu)
            summary.setdefault(workload_name, {})[name] = figures
            print(
                f"{workload_name:18} {name:30}: CPU/request {figures['cpu_us_per_request']:.0f} "
                f"us ({figures['cpu_min']:.0f}-{figures['cpu_max']:.0f}), p50 "
                f"{figures['p50_ms']:.3f} ms, p99 {figures['p99_ms']:.3f} ms"
            )
    settings = {k: str(v) for k, v in vars(args).items()}
    written = record("light_load", settings, {"runs": runs, "summary": summary}, args.out)
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
