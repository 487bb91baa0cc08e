"""The serving comparisons on `dlrm`, each against the example config measured in the same run.

    python -m bench.suite [--rounds 3] [--seconds 4] [--concurrency 64] [--rows 64]

Variants (one Ferry process each, all serving the same model file):
    baseline        the example config: dynamic batching, max_queue_delay 200 µs, 1 instance
    batching off    no dynamic_batching block: each request runs alone
    delay 0 / 1 ms / 5 ms       max_queue_delay_microseconds 0, 1000, 5000
    2 instances     instance_group count 2 (1 ONNX Runtime thread each)
    streaming       the baseline server, load sent over ModelStreamInfer instead of ModelInfer

Closed loop, loadtest in one client process. Rounds visit the variants in turn so drift hits all.
Direct ONNX Runtime against served, and echo against a bare gRPC server: bench/serving_core.py.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import ROOT, ferry, record, stop
from ferry.loadtest.processes import Plan, run
from ferry.loadtest.report import result_of
from ferry.loadtest.workload import Choice, Workload
from ferry.server.example_repo import write_example_repo

VARIANTS = {
    "baseline": lambda c: c,
    "batching off": lambda c: c[: c.index("dynamic_batching")] + c[c.index("instance_group") :],
    "delay 0": lambda c: c.replace("max_queue_delay_microseconds: 200", ""),
    "delay 1 ms": lambda c: c.replace("delay_microseconds: 200", "delay_microseconds: 1000"),
    "delay 5 ms": lambda c: c.replace("delay_microseconds: 200", "delay_microseconds: 5000"),
    "2 instances": lambda c: c.replace("count: 1 kind", "count: 2 kind"),
}


def repositories(work: Path) -> dict[str, Path]:
    examples = work / "examples"
    write_example_repo(examples)
    config = (examples / "dlrm" / "config.pbtxt").read_text()
    repos = {}
    for name, change in VARIANTS.items():
        repo = work / name.replace(" ", "_")
        shutil.copytree(examples / "dlrm", repo / "dlrm")
        (repo / "dlrm" / "config.pbtxt").write_text(change(config))
        repos[name] = repo
    return repos


def measure(address: str, args: argparse.Namespace, streaming: bool) -> dict[str, Any]:
    workload = Workload("dlrm", rows=Choice((args.rows,), (1.0,)), id_range=1000)
    plan = Plan(
        address,
        workload,
        "closed",
        concurrency=args.concurrency,
        duration_s=args.seconds,
        warmup_s=0.5,
        streaming=streaming,
    )
    result = result_of(
        run(plan),
        model="dlrm",
        mode="closed",
        duration_s=args.seconds,
        concurrency=args.concurrency,
    )
    return {
        "rows_per_s": result.rows_per_s,
        "latency_ms": result.latency_ms,
        "errors": result.errors,
        "client_cpu_cores": result.client_cpu_cores,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rows", type=int, default=64)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ferry-suite-"))
    servers = {}
    try:
        for name, repo in repositories(work).items():
            servers[name] = ferry(repo, work / f"{repo.name}.log")
        rounds: list[dict[str, Any]] = []
        for _ in range(args.rounds):
            this: dict[str, Any] = {}
            for name, (_, address) in servers.items():
                this[name] = measure(address, args, streaming=False)
            this["streaming"] = measure(servers["baseline"][1], args, streaming=True)
            rounds.append(this)
    finally:
        for process, _ in servers.values():
            stop(process)

    names = [*VARIANTS, "streaming"]
    print(f"dlrm, {args.rows} rows/request, concurrency {args.concurrency}, closed loop")
    print(f"{'variant':<14} {'rows/s (median)':>16} {'x baseline':>22} {'p50 ms':>8} {'p99 ms':>8}")
    summary = {}
    for name in names:
        ratios = [r[name]["rows_per_s"] / r["baseline"]["rows_per_s"] for r in rounds]
        rows = float(np.median([r[name]["rows_per_s"] for r in rounds]))
        p50 = float(np.median([r[name]["latency_ms"]["p50"] for r in rounds]))
        p99 = float(np.median([r[name]["latency_ms"]["p99"] for r in rounds]))
        spread = f"{np.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        summary[name] = {"rows_per_s": rows, "ratio": ratios, "p50_ms": p50, "p99_ms": p99}
        print(f"{name:<14} {rows:>16.0f} {spread:>22} {p50:>8.2f} {p99:>8.2f}")
    path = record("suite", vars(args), {"rounds": rounds, "summary": summary})
    print(f"full results: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
