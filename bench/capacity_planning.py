"""The numbers behind docs/deployment.md's capacity-planning example, read as an operator would:
from Ferry's own /metrics.

    python -m bench.capacity_planning [--rounds 2] [--seconds 8] [--rows 64]

One replica serves `dlrm`. A closed loop (64 in flight) finds its saturated rate; then open
loops (Poisson arrivals) run at 30%, 60% and 90% of it. Around each step the script scrapes
/metrics and reports what the autoscaler and an operator would see: queue time per request
(the HorizontalPodAutoscaler's metric: rate of nv_inference_queue_duration_us over rate of
nv_inference_request_success), the instances' busy ratio (rate of ferry_instance_busy_seconds),
rows per batch execution, and the client's p50/p99.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench.harness import ferry, metrics_url, record, stop
from ferry.loadtest.processes import Plan, run
from ferry.loadtest.workload import Choice, Workload
from ferry.server.example_repo import write_example_repo

MODEL = "dlrm"


def scrape(url: str) -> dict[str, float]:
    """Sums over the model's series (instances, versions) of the counters the example reads."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    wanted = {
        "nv_inference_queue_duration_us",
        "nv_inference_request_success",
        "nv_inference_count",
        "nv_inference_exec_count",
        "ferry_instance_busy_seconds",
    }
    totals = dict.fromkeys(wanted, 0.0)
    instances = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removesuffix("_total")
            if name in wanted and sample.labels.get("model") == MODEL:
                totals[name] += sample.value
                instances += name == "ferry_instance_busy_seconds"
    totals["instances"] = float(instances)
    return totals


def step(address: str, metrics: str, workload: Workload, mode: str, rate: float, seconds: float
         ) -> dict[str, Any]:  # fmt: skip
    plan = Plan(address, workload, mode, concurrency=64, rate=rate, duration_s=seconds,
                warmup_s=1.0)  # fmt: skip
    before = scrape(metrics)
    tally = run(plan)
    after = scrape(metrics)
    delta = {k: after[k] - before[k] for k in before if k != "instances"}
    wall = seconds + 1.0  # the counters also moved during the warm-up
    latencies = np.array(tally.latencies_s) * 1e3
    return {
        "mode": mode,
        "offered_per_s": rate or None,
        "answered_per_s": len(tally.latencies_s) / seconds,
        "errors": dict(tally.errors),
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "queue_us_per_request": delta["nv_inference_queue_duration_us"]
        / max(delta["nv_inference_request_success"], 1.0),
        "busy_ratio": delta["ferry_instance_busy_seconds"] / wall / max(after["instances"], 1.0),
        "rows_per_batch": delta["nv_inference_count"] / max(delta["nv_inference_exec_count"], 1.0),
        "instances": after["instances"],
    }


def rounds(address: str, metrics: str, args: argparse.Namespace) -> Iterator[list[dict[str, Any]]]:
    workload = Workload(MODEL, rows=Choice((args.rows,), (1.0,)))
    for _ in range(args.rounds):
        saturated = step(address, metrics, workload, "closed", 0.0, args.seconds)
        steps = [saturated]
        for share in (0.3, 0.6, 0.9):
            rate = share * saturated["answered_per_s"]
            steps.append({"share": share, **step(address, metrics, workload, "open", rate,
                                                 args.seconds)})  # fmt: skip
        yield steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rows", type=int, default=64)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-capacity-planning-"))
    write_example_repo(work / "models")
    server, address = ferry(work / "models", work / "ferry.log")
    try:
        metrics = metrics_url(work / "ferry.log")
        results = list(rounds(address, metrics, args))
    finally:
        stop(server)
    for index, steps in enumerate(results):
        for s in steps:
            print(
                f"round {index} {s['mode']:6} {s.get('share', 1.0):4.0%} "
                f"{s['answered_per_s']:8.0f}/s p50 {s['p50_ms']:6.2f} p99 {s['p99_ms']:6.2f} ms "
                f"queue {s['queue_us_per_request']:7.0f} us/request "
                f"busy {s['busy_ratio']:.2f} rows/batch {s['rows_per_batch']:.0f}"
            )
    saturated = [steps[0]["answered_per_s"] for steps in results]
    summary = {
        "saturated_per_s": {"median": statistics.median(saturated), "all": saturated},
    }
    path = record("capacity_planning", vars(args), {"rounds": results, "summary": summary})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
