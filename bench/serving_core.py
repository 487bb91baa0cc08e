"""Serving-core benchmark (issue 2), every number against a baseline measured in the same run.

(a) dlrm throughput: ONNX Runtime called directly at its best batch size (rows/s) against rows/s
    served by Ferry under many concurrent 64-row requests (loadtest closed loop, same machine).
(b) echo latency: p50/p99 of single small requests to Ferry's `echo` against a bare grpc.aio
    echo server (bench/bare_echo_server.py), the floor for Python gRPC here.

    python bench/serving_core.py [--rounds 3] [--seconds 8]

Rounds alternate baseline and Ferry so drift on a noisy machine hits both. Prints one table and
writes the full results as JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtest.run import run_closed_loop  # noqa: E402
from server.example_repo import write_example_repo  # noqa: E402


def start(cmd: list[str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    handle = log.open("wb")
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = re.search(r"serving on ([^,\s]+)", log.read_text())
        if match:
            return process, match.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{cmd[0]} did not start:\n{log.read_text()}")


def direct_dlrm(model: Path, seconds: float) -> dict[str, float]:
    """rows/s of ONNX Runtime alone at several batch sizes (all cores, like the server)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    rates = {}
    for batch in (64, 256, 1024):
        feeds = [
            {
                "dense": rng.standard_normal((batch, 13)).astype(np.float32),
                "sparse": rng.integers(0, 1000, (batch, 26)).astype(np.int64),
            }
            for _ in range(4)
        ]
        session.run(None, feeds[0])
        done, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            session.run(None, feeds[done % 4])
            done += 1
        rates[str(batch)] = done * batch / elapsed
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
    repo = work / "models"
    write_example_repo(repo)
    ferry, ferry_addr = start(
        [
            sys.executable,
            "-m",
            "server",
            "serve",
            "--model-repository",
            str(repo),
            "--grpc-port",
            "0",
        ],
        work / "ferry.log",
    )
    rounds = []
    bare, bare_addr = start([sys.executable, "bench/bare_echo_server.py"], work / "bare.log")
    try:
        for _ in range(args.rounds):
            direct = direct_dlrm(repo / "dlrm" / "1" / "model.onnx", args.seconds / 2)
            served = asyncio.run(
                run_closed_loop(
                    ferry_addr,
                    "dlrm",
                    concurrency=args.concurrency,
                    rows=64,
                    duration_s=args.seconds,
                    id_range=1000,
                )
            )
            floor = asyncio.run(
                run_closed_loop(
                    bare_addr,
                    "echo",
                    concurrency=1,
                    rows=1,
                    duration_s=args.seconds,
                    free_dim=16,
                )
            )
            echo = asyncio.run(
                run_closed_loop(
                    ferry_addr,
                    "echo",
                    concurrency=1,
                    rows=1,
                    duration_s=args.seconds,
                    free_dim=16,
                )
            )
            best = max(direct.values())
            rounds.append(
                {
                    "direct_rows_per_s": direct,
                    "served_rows_per_s": served.rows_per_s,
                    "served_errors": served.errors,
                    "served_latency_ms": served.latency_ms,
                    "throughput_ratio": served.rows_per_s / best,
                    "bare_echo_ms": floor.latency_ms,
                    "ferry_echo_ms": echo.latency_ms,
                    "echo_p50_ratio": echo.latency_ms["p50"] / floor.latency_ms["p50"],
                    "echo_p99_ratio": echo.latency_ms["p99"] / floor.latency_ms["p99"],
                }
            )
    finally:
        for process in (ferry, bare):
            process.terminate()
            process.wait(timeout=30)

    def spread(key: str) -> str:
        values = [r[key] for r in rounds]
        return f"{np.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"

    print(
        f"{'round':>5} {'direct best rows/s':>19} {'served rows/s':>14} {'ratio':>6} "
        f"{'bare p50/p99 ms':>16} {'ferry p50/p99 ms':>17} {'p50 x':>6}"
    )
    for i, r in enumerate(rounds):
        print(
            f"{i + 1:>5} {max(r['direct_rows_per_s'].values()):>19.0f} "
            f"{r['served_rows_per_s']:>14.0f} {r['throughput_ratio']:>6.2f} "
            f"{r['bare_echo_ms']['p50']:>7.3f}/{r['bare_echo_ms']['p99']:<8.3f} "
            f"{r['ferry_echo_ms']['p50']:>8.3f}/{r['ferry_echo_ms']['p99']:<8.3f} "
            f"{r['echo_p50_ratio']:>6.2f}"
        )
    print(f"throughput ratio served/direct: {spread('throughput_ratio')}")
    print(f"echo p50 ratio ferry/bare:      {spread('echo_p50_ratio')}")
    print(f"echo p99 ratio ferry/bare:      {spread('echo_p99_ratio')}")

    record = {
        "benchmark": "serving_core",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, onnxruntime {ort.__version__}",
        "settings": vars(args),
        "rounds": rounds,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"serving_core-{record['date'][:16].replace(':', '-')}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"full results: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
