"""Would other batch sizes serve more at equal p99? `dlrm` under a closed loop of 64-row
requests, its batches formed as Ferry forms them and as a fuller-batch policy would.

    python -m bench.batch_formation --perf-analyzer PATH --cuda-runtime-lib DIR
        [--in-flight 16] [--rounds 3] [--server-cpus 0-3 --client-cpus 4-15] [--out DIR]

A closed loop of N requests on one instance settles into batches that alternate: while one batch
runs, the requests of the batch before it come back and wait, and the next batch is what came
back. At 16 in flight of 64 rows that is two batches of about 320 and 704 rows, where a server
that held the instance idle until every request is back would run 1024. Holding it idle buys
something only if a batch's fixed cost is larger than the wait for the stragglers. So, in one
interleaved run (perf_analyzer as the client, one Ferry serving every variant), per variant:
rows/s, p50 and p99, the batch sizes that formed (the model's batch statistics) and a fit of a
batch's compute time as `a + b * rows` over them:

- `dlrm`: the example config (a 200 µs queue delay): what Ferry does;
- `dlrm_full`: `preferred_batch_size: [ 1024 ]` with an 8 ms queue delay: a batch leaves when
  1024 rows are there or the oldest request has waited 8 ms, that is, once everyone is back;
- `dlrm_d2000`: a 2 ms delay, in between;
- `dlrm_slo`: no delay configured, a p99 budget instead (`--budget-ms`, `ferry.slo.p99_ms`):
  the controller chooses the delay and the cap from the arrival rate and the learned batch cost.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bench.front_end_cost import Workload, perf_analyzer, tree_cpu_s
from bench.harness import ferry, perf_analyzer_options, record, stop
from ferry.server.example_repo import write_example_repo

VARIANTS = {
    "dlrm": None,
    "dlrm_full": (8000, "preferred_batch_size: [ 1024 ]"),
    "dlrm_d2000": (2000, ""),
    "dlrm_slo": None,
}


def repository(work: Path, budget_ms: float) -> Path:
    examples = work / "examples"
    write_example_repo(examples)
    repo = work / "repo"
    text = (examples / "dlrm" / "config.pbtxt").read_text()
    for name, change in VARIANTS.items():
        shutil.copytree(examples / "dlrm", repo / name)
        config = text.replace('name: "dlrm"', f'name: "{name}"')
        if change is not None:
            delay, extra = change
            config = config.replace(
                "max_queue_delay_microseconds: 200",
                f"max_queue_delay_microseconds: {delay}\n  {extra}",
            )
        if name == "dlrm_slo":
            config = config.replace("max_queue_delay_microseconds: 200", "")
            config += 'parameters { key: "ferry.slo.p99_ms" '
            config += f'value: {{ string_value: "{budget_ms}" }} }}\n'

        (repo / name / "config.pbtxt").write_text(config)
    return repo


def batch_stats(http: str, model: str) -> dict[int, tuple[int, int]]:
    """{batch rows: (batches, compute ns)} from the model's statistics over HTTP/REST."""
    with urllib.request.urlopen(f"http://{http}/v2/models/{model}/stats", timeout=10) as answer:
        document = json.load(answer)
    out = {}
    for entry in document["model_stats"][0].get("batch_stats", []):
        infer = entry["compute_infer"]
        out[int(entry["batch_size"])] = (int(infer["count"]), int(infer["ns"]))
    return out


def formed(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> dict[str, Any]:
    """The batches run between two readings: their sizes and a fit of compute time to rows."""
    sizes: dict[int, int] = {}
    rows, means, weights = [], [], []
    for size, (count, ns) in after.items():
        count0, ns0 = before.get(size, (0, 0))
        if count > count0:
            sizes[size] = count - count0
            rows.append(size)
            means.append((ns - ns0) / (count - count0) / 1e6)
            weights.append(count - count0)
    total = sum(sizes.values())
    fit: dict[str, float] = {}
    if len(rows) >= 2 and max(rows) > min(rows):
        slope, intercept = np.polyfit(rows, means, 1, w=np.sqrt(weights))
        fit = {"fixed_ms": float(intercept), "per_row_us": float(slope) * 1e3}
    top = sorted(sizes.items(), key=lambda kv: -kv[1])[:6]
    return {
        "batches": total,
        "mean_rows": sum(s * n for s, n in sizes.items()) / max(total, 1),
        "commonest": {str(s): n for s, n in top},
        "compute_fit": fit,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    perf_analyzer_options(parser)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget-ms", type=float, default=50.0, help="dlrm_slo's p99 budget")
    parser.add_argument("--seconds", type=float, default=3.0, help="perf_analyzer window")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-batch-formation-"))
    repo = repository(work, args.budget_ms)
    server, address = ferry(repo, work / "ferry.log", cpus=args.server_cpus)
    http = re.search(r"HTTP on http://([^\s,]+)", (work / "ferry.log").read_text())
    if http is None:
        raise RuntimeError("the server announced no HTTP address")
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        names = list(VARIANTS)
        for index in range(args.rounds):
            for name in names if index % 2 == 0 else names[::-1]:
                workload = Workload(name, args.rows, args.in_flight)
                before, cpu0 = batch_stats(http[1], name), tree_cpu_s(server.pid)
                measured = perf_analyzer(
                    args.perf_analyzer, args.cuda_runtime_lib, address, workload,
                    work / "pa.csv", args.seconds, cpus=args.client_cpus,
                )  # fmt: skip
                result: dict[str, Any] = dict(measured)
                result["server_cpu_s"] = tree_cpu_s(server.pid) - cpu0
                result.update(formed(before, batch_stats(http[1], name)))
                runs.setdefault(name, []).append(result)
                fit = result["compute_fit"]
                print(
                    f"round {index} {name:11}: {result['rows_per_s']:8.0f} rows/s, p50 "
                    f"{result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, mean batch "
                    f"{result['mean_rows']:.0f} rows, commonest {result['commonest']}, compute "
                    f"{fit.get('fixed_ms', float('nan')):.2f} ms + "
                    f"{fit.get('per_row_us', float('nan')):.1f} µs/row",
                    flush=True,
                )
    finally:
        stop(server)
    summary = {
        name: {
            key: statistics.median(r[key] for r in results)
            for key in ("rows_per_s", "p50_ms", "p99_ms", "mean_rows")
        }
        for name, results in runs.items()
    }
    base = runs["dlrm"]
    ratios = {
        name: [r["rows_per_s"] / b["rows_per_s"] for r, b in zip(results, base, strict=True)]
        for name, results in runs.items()
    }
    for name, values in ratios.items():
        print(f"{name:11} rows/s against dlrm: " + ", ".join(f"{v:.2f}" for v in values))
    settings = {
        "in_flight": args.in_flight, "rows": args.rows, "rounds": args.rounds,
        "seconds": args.seconds, "budget_ms": args.budget_ms,
        "server_cpus": sorted(args.server_cpus) if args.server_cpus else None,
        "client_cpus": sorted(args.client_cpus) if args.client_cpus else None,
    }  # fmt: skip
    written = record(
        "batch_formation", settings, {"runs": runs, "summary": summary, "ratios": ratios}, args.out
    )
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
