"""Reloads under load lose nothing: closed-loop load on `dlrm` while the model is reloaded with a
new version 20 times, through the load RPC (explicit mode) and through poll mode; then RSS over
20 load/unload cycles.

    python -m bench.model_reload [--rounds 2] [--reloads 20]

Each round measures the same closed loop (8 in flight, 64-row requests) without reloads for 12 s
(the baseline) and while new versions arrive one after another (each published, loaded, served,
then 0.5 s until the next) for as long as the reloads take; the p99 ratio is
reload / baseline, the failed requests are every non-OK answer. The model carries a warm-up
(model_warmup) at the largest batch the load forms (8 requests of 64 rows), as a production model
that reloads should, so a new version takes traffic warm.
RSS: /proc/PID/status VmRSS after the first load/unload cycle and after the last.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as tc

from bench.harness import ferry, record, rss_kib, stop
from ferry.loadtest.processes import Plan, run
from ferry.loadtest.stats import Tally
from ferry.loadtest.workload import Choice, Workload
from ferry.server.example_repo import write_example_repo

WARMUP = """
model_warmup [ {
  name: "warm"
  batch_size: 512
  count: 2
  inputs { key: "dense" value: { data_type: TYPE_FP32 dims: [ 13 ] random_data: true } }
  inputs { key: "sparse" value: { data_type: TYPE_INT64 dims: [ 26 ] random_data: true } }
} ]
"""


def repository(work: Path) -> Path:
    examples = work / "examples"
    write_example_repo(examples)
    repo = work / "repo"
    shutil.copytree(examples / "dlrm", repo / "dlrm")
    config = repo / "dlrm" / "config.pbtxt"
    config.write_text(config.read_text() + WARMUP)
    return repo


def new_version(repo: Path, version: int) -> None:
    """A new version folder (the same weights: what matters is that it loads and takes over),
    made beside the repository and moved in whole, as a deployment should publish one: a poll
    never sees it half-made. The model file is a hard link to version 1's: the server reads it
    as any other file, and the publisher (this script, on the server's cores) spends no CPU
    copying it that the measurement would charge to the reload."""
    staging = repo.parent / f"staging-{version}"
    staging.mkdir()
    os.link(repo / "dlrm" / "1" / "model.onnx", staging / "model.onnx")
    staging.rename(repo / "dlrm" / str(version))


def load(address: str, seconds: float, warmup_s: float = 0.5) -> Tally:
    plan = Plan(address, Workload("dlrm", rows=Choice((64,), (1.0,))), "closed",
                concurrency=8, duration_s=seconds, warmup_s=warmup_s)  # fmt: skip
    return run(plan)


def load_until(address: str, done: threading.Event) -> Tally:
    """The closed loop in one-second pieces until `done`: the measurement covers the reloads,
    however long they take, and no more."""
    merged = Tally()
    while not done.is_set():
        merged.merge(load(address, 1.0, warmup_s=0.1))
    return merged


def summary(tally: Tally) -> dict[str, Any]:
    latencies = np.array(tally.latencies_s) * 1e3
    return {
        "answered": len(latencies),
        "failed": sum(tally.errors.values()),
        "errors": dict(tally.errors),
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
    }


def under_reloads(address: str, repo: Path, first: int, reloads: int, via_rpc: bool
                  ) -> tuple[dict[str, Any], list[str]]:  # fmt: skip
    """The closed loop while `reloads` new versions arrive one after another: each is published,
    loaded (by the RPC, or by the poll), served, and 0.5 s later the next one comes."""
    client = tc.InferenceServerClient(address)
    done = threading.Event()
    result: dict[str, Tally] = {}
    loader = threading.Thread(target=lambda: result.update(t=load_until(address, done)))
    loader.start()
    time.sleep(1.0)
    served: list[str] = []
    try:
        for n in range(reloads):
            version = str(first + n)
            new_version(repo, first + n)
            if via_rpc:
                client.load_model("dlrm")
            deadline = time.monotonic() + 60
            while client.get_model_metadata("dlrm").versions[-1] != version:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"version {version} was not served within 60 s")
                time.sleep(0.05)
            served.append(version)
            time.sleep(0.5)
    finally:
        done.set()
        loader.join()
    return summary(result["t"]), served


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reloads", type=int, default=20)
    args = parser.parse_args()
    results: dict[str, Any] = {"rounds": []}
    for round_index in range(args.rounds):
        for mode in ("explicit", "poll"):
            work = Path(tempfile.mkdtemp(prefix="ferry-reload-"))
            repo = repository(work)
            extra = ["--model-control-mode", mode]
            extra += ["--load-model", "dlrm"] if mode == "explicit" else [
                "--repository-poll-secs", "0.2"]  # fmt: skip
            server, address = ferry(repo, work / "ferry.log", *extra)
            try:
                stop_at = threading.Event()
                threading.Timer(12.0, stop_at.set).start()
                baseline = summary(load_until(address, stop_at))  # the same pieces as below
                via_rpc = mode == "explicit"
                reloading, served = under_reloads(address, repo, 2, args.reloads, via_rpc)
            finally:
                stop(server)
            entry = {
                "round": round_index,
                "mode": mode,
                "baseline": baseline,
                "reloading": reloading,
                "p99_ratio": reloading["p99_ms"] / baseline["p99_ms"],
                "versions_served": served,
            }
            results["rounds"].append(entry)
            print(f"round {round_index} {mode:8}: baseline p99 {baseline['p99_ms']:.1f} ms, "
                  f"reloading p99 {reloading['p99_ms']:.1f} ms (x{entry['p99_ratio']:.2f}), "
                  f"failed {reloading['failed']} of {reloading['answered'] + reloading['failed']}"
                  f", last version served {served[-1]}")  # fmt: skip
    # RSS over load/unload cycles
    work = Path(tempfile.mkdtemp(prefix="ferry-reload-rss-"))
    repo = repository(work)
    server, address = ferry(repo, work / "ferry.log", "--model-control-mode", "explicit")
    try:
        client = tc.InferenceServerClient(address)
        sizes = []
        for _ in range(20):
            client.load_model("dlrm")
            client.unload_model("dlrm")
            time.sleep(0.2)
            sizes.append(rss_kib(server.pid))
    finally:
        stop(server)
    results["rss_kib"] = sizes
    results["rss_growth"] = sizes[-1] / sizes[0] - 1
    print(f"RSS after cycle 1: {sizes[0] / 1024:.0f} MiB, after cycle 20: {sizes[-1] / 1024:.0f} "
          f"MiB ({results['rss_growth']:+.1%})")  # fmt: skip
    ratios = [r["p99_ratio"] for r in results["rounds"]]
    results["summary"] = {
        "failed": sum(r["reloading"]["failed"] for r in results["rounds"]),
        "p99_ratio": {"median": statistics.median(ratios), "max": max(ratios), "min": min(ratios)},
    }
    path = record("model_reload", vars(args), results)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
