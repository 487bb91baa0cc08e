"""INT8 against FP32, both served by Ferry on this host's CPU: `dlrm` built to INT8 by
`ferry build` (entropy calibration), next to the FP32 `dlrm`, in one server, one run.

    python -m bench.int8_serving [--rounds 3] [--seconds 8] [--concurrency 4]

Rows/s in a closed loop of 256-row and of 64-row requests, the two models in alternating slices
(`--rounds` of each per request size), so that the machine's drift falls on both; the ratio is
INT8 / FP32 per round. Accuracy: the `ctr` of 10,000 rows, asked of both served models.
Calibration: 20,000 rows drawn as the load generator draws its requests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as tc

from bench.harness import ferry, record, stop
from ferry.loadtest.processes import Plan, run
from ferry.loadtest.workload import Choice, Workload
from ferry.server.example_repo import write_example_repo

CALIBRATION_ROWS = 20_000
ACCURACY_ROWS = 10_000


def inputs(rows: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "dense": rng.standard_normal((rows, 13)).astype(np.float32),
        "sparse": rng.integers(0, 10**6, (rows, 26)).astype(np.int64),
    }


def build_int8(repo: Path, work: Path) -> dict[str, Any]:
    data = work / "calibration.npz"
    np.savez(data, **inputs(CALIBRATION_ROWS, 1))  # type: ignore[arg-type]
    command = [sys.executable, "-m", "ferry", "build", str(repo / "dlrm" / "1" / "model.onnx"),
               "--repository", str(repo), "--name", "dlrm_int8", "--precision", "int8",
               "--method", "entropy", "--calibration", str(data), "--max-error", "0.01",
               "--batch-sizes", "64,256"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    print(done.stdout)
    manifest: dict[str, Any] = json.loads((repo / "dlrm_int8" / "1" / "manifest.json").read_text())
    return manifest


def served_ctr(client: tc.InferenceServerClient, model: str) -> np.ndarray:
    data = inputs(ACCURACY_ROWS, 7)
    parts = []
    for start in range(0, ACCURACY_ROWS, 1000):
        request = []
        for name, datatype in (("dense", "FP32"), ("sparse", "INT64")):
            chunk = data[name][start : start + 1000]
            tensor = tc.InferInput(name, list(chunk.shape), datatype)
            tensor.set_data_from_numpy(chunk)
            request.append(tensor)
        parts.append(client.infer(model, request).as_numpy("ctr"))
    return np.concatenate(parts)


def closed_loop(address: str, model: str, rows: int, seconds: float, concurrency: int
                ) -> dict[str, float]:  # fmt: skip
    plan = Plan(address, Workload(model, rows=Choice((rows,), (1.0,))), "closed",
                concurrency=concurrency, duration_s=seconds, warmup_s=1.0)  # fmt: skip
    tally = run(plan)
    latencies = np.array(tally.latencies_s) * 1e3
    return {
        "rows_per_s": tally.rows / seconds,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "failed": float(sum(tally.errors.values())),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-int8-"))
    examples = work / "examples"
    write_example_repo(examples)
    repo = work / "repo"
    repo.mkdir()
    (repo / "dlrm").symlink_to(examples / "dlrm", target_is_directory=True)
    manifest = build_int8(repo, work)
    server, address = ferry(repo, work / "ferry.log")
    results: dict[str, Any] = {"build": {k: manifest[k] for k in ("accuracy", "speed",
                                                                   "calibration")}}  # fmt: skip
    try:
        client = tc.InferenceServerClient(address)
        fp32, int8 = served_ctr(client, "dlrm"), served_ctr(client, "dlrm_int8")
        difference = np.abs(fp32.astype(np.float64) - int8)
        results["accuracy"] = {"rows": ACCURACY_ROWS, "max_abs_ctr_difference":
                               float(difference.max()), "mean_abs_ctr_difference":
                               float(difference.mean())}  # fmt: skip
        print(f"ctr over {ACCURACY_ROWS} rows: max |difference| {difference.max():.5f}, "
              f"mean {difference.mean():.6f}")  # fmt: skip
        for rows in (256, 64):
            series: list[dict[str, Any]] = []
            for round_index in range(args.rounds):
                entry: dict[str, Any] = {"round": round_index}
                for model in ("dlrm", "dlrm_int8"):
                    entry[model] = closed_loop(address, model, rows, args.seconds,
                                               args.concurrency)  # fmt: skip
                entry["ratio"] = entry["dlrm_int8"]["rows_per_s"] / entry["dlrm"]["rows_per_s"]
                series.append(entry)
                print(f"{rows} rows, round {round_index}: FP32 "
                      f"{entry['dlrm']['rows_per_s']:,.0f} rows/s, INT8 "
                      f"{entry['dlrm_int8']['rows_per_s']:,.0f} rows/s "
                      f"(x{entry['ratio']:.2f})")  # fmt: skip
            ratios = [e["ratio"] for e in series]
            results[f"rows_{rows}"] = {
                "rounds": series,
                "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
            }
    finally:
        stop(server)
    path = record("int8_serving", vars(args), results)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
