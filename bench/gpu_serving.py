"""End-to-end GPU benchmark, on the GPU machine: `dlrm_large` served
over gRPC by 1, 2, 4, 8 worker processes per GPU, loaded by a multi-process client on the same
host, against ONNX Runtime CUDA called directly on the same model in the same run.

    PYTHONPATH=/tmp/site:$PWD python3 -m bench.gpu_serving --repo DIR [--workers 1,2,4,8]
        [--gpus 0] [--two-gpus] [--seconds 10] [--out FILE]

ceiling     session.run with numpy feeds (host copies included) at 16,384 and 1,024 rows
served      requests of 1,024 rows; `ferry serve --workers gpu:N` (N workers per visible GPU,
            SO_REUSEPORT), dlrm_large with 2 instances per worker; a closed-loop load generator
            of --client-processes processes; rows/s, p50/p99, and the GPU's busy share
            (`nvidia-smi dmon -s u`: SM %, mean over the measured seconds)
two GPUs    with --two-gpus LIST: the best workers-per-GPU count again on those GPUs, against
            the same count on one (with --scale-load, at the same offered load per GPU)
Prints one table; --out writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import ROOT, record


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ceiling(path: Path, rows: int, seconds: float, device: str) -> float:
    """ONNX Runtime CUDA called directly, numpy feeds (copies to and from the host included)."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(path), providers=[("CUDAExecutionProvider", {"device_id": device})]
    )
    rng = np.random.default_rng(1)
    batch = {
        "dense": rng.standard_normal((rows, 13)).astype(np.float32),
        "sparse": rng.integers(0, 10**9, (rows, 26)).astype(np.int64),
    }
    for _ in range(5):
        session.run(None, batch)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, batch)
        done += 1
    return done * rows / (time.perf_counter() - start)


def dmon(log: Path) -> subprocess.Popen[bytes]:
    """nvidia-smi dmon: one line per GPU per second; utilization only."""
    return subprocess.Popen(
        ["nvidia-smi", "dmon", "-s", "u", "-d", "1"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def busy_share(log: Path, since: float, until: float, started: float) -> dict[str, float]:
    """Mean SM % per GPU over the dmon lines written between `since` and `until`."""
    per_gpu: dict[str, list[float]] = {}
    lines = [line for line in log.read_text().splitlines() if line and not line.startswith("#")]
    count = max(1, len({line.split()[0] for line in lines}))
    for i, line in enumerate(lines):
        at = started + (i // count) + 1  # one sample per GPU per second
        if not since <= at <= until:
            continue
        fields = line.split()
        if len(fields) > 1 and fields[1].isdigit():
            per_gpu.setdefault(fields[0], []).append(float(fields[1]))
    return {gpu: sum(v) / len(v) for gpu, v in per_gpu.items() if v}


def serve(repo: Path, per_gpu: int, gpus: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`ferry serve --workers gpu:N` on the GPUs named; ready when every worker said so."""
    port = free_port()
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpus)
    command = [
        sys.executable, "-m", "ferry", "serve", "--model-repository", str(repo),
        "--workers", f"gpu:{per_gpu}", "--grpc-port", str(port), "--metrics-port", "-1",
        "--http-port", "-1",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    workers = per_gpu * len(gpus.split(","))
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ferry exited:\n{log.read_text()[-3000:]}")
        if len(re.findall(r"serving on ", log.read_text())) >= workers:
            return process, port
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"ferry did not become ready:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def load(
    port: int, seconds: float, processes: int, concurrency: int, channels: int, out: Path
) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "ferry.loadtest.run", "--address", f"127.0.0.1:{port}",
        "--model", "dlrm_large", "--rows", "1024", "--id-range", str(10**9),
        "--concurrency", str(concurrency), "--processes", str(processes),
        "--channels", str(channels), "--duration", str(seconds), "--warmup", "3",
        "--pool", "16", "--json", str(out),
    ]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def run_served(
    repo: Path, per_gpu: int, gpus: str, args: argparse.Namespace, work: Path, scale: int = 1
) -> dict[str, Any]:
    """One served run; `scale` multiplies the offered load (requests in flight, connections),
    so N GPUs are compared with one at the same load per GPU."""
    tag = f"w{per_gpu}-g{gpus.replace(',', '')}"
    process, port = serve(repo, per_gpu, gpus, work / f"ferry-{tag}.log")
    monitor_log = work / f"dmon-{tag}.log"
    monitor = dmon(monitor_log)
    started = time.time()
    try:
        since = time.time() + 3  # the load generator's warm-up
        result = load(
            port,
            args.seconds,
            args.client_processes,
            args.concurrency * scale,
            args.channels * scale,
            work / f"{tag}.json",
        )
        until = time.time()
    finally:
        monitor.terminate()
        monitor.wait()
        stop(process)
    return {
        "workers_per_gpu": per_gpu,
        "gpus": gpus,
        "concurrency": args.concurrency * scale,
        "rows_per_s": result["rows_per_s"],
        "requests_per_s": result["requests_per_s"],
        "latency_ms": result["latency_ms"],
        "errors": result["errors"],
        "client_cpu_cores": result["client_cpu_cores"],
        "gpu_sm_busy_pct": busy_share(monitor_log, since, until, started),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, help="has dlrm_large (else written to a temp dir)")
    parser.add_argument("--workers", default="1,2,4,8", help="worker processes per GPU")
    parser.add_argument("--gpus", default="0", help="CUDA_VISIBLE_DEVICES for the one-GPU runs")
    parser.add_argument("--two-gpus", default="", help="e.g. 0,1: also run the best count there")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--client-processes", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight, total")
    parser.add_argument(
        "--channels",
        type=int,
        default=96,
        help="gRPC connections, total: SO_REUSEPORT spreads connections, not requests, so "
        "several per worker keep the workers evenly loaded",
    )
    parser.add_argument(
        "--scale-load",
        action="store_true",
        help="the several-GPU run gets the load times the GPU count (the same load per GPU)",
    )
    parser.add_argument("--out", type=Path, help="folder for the JSON record (bench/results)")
    args = parser.parse_args()
    from ferry.server.example_repo import write_example_repo

    work = Path(tempfile.mkdtemp(prefix="ferry-gpu-serving-"))
    repo = args.repo
    if repo is None:
        repo = work / "models"
        write_example_repo(repo, large=True)
    # Only dlrm_large: the workers load nothing else.
    served = work / "served"
    (served / "dlrm_large" / "1").mkdir(parents=True)
    (served / "dlrm_large" / "config.pbtxt").write_text(
        (repo / "dlrm_large" / "config.pbtxt").read_text()
    )
    (served / "dlrm_large" / "1" / "model.onnx").symlink_to(
        (repo / "dlrm_large" / "1" / "model.onnx").resolve()
    )
    path = served / "dlrm_large" / "1" / "model.onnx"
    first = args.gpus.split(",")[0]
    env_device = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = first
    ceilings = {rows: ceiling(path, rows, 5.0, "0") for rows in (16384, 1024)}
    if env_device is None:
        del os.environ["CUDA_VISIBLE_DEVICES"]
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = env_device
    top = ceilings[16384]
    print(f"direct ceiling (ONNX Runtime CUDA, host copies): {top:,.0f} rows/s at 16,384 rows, "
          f"{ceilings[1024]:,.0f} at 1,024")  # fmt: skip
    runs = []
    print(f"{'GPUs':>5} {'workers/GPU':>11} {'rows/s':>12} {'/ceiling':>9} {'req/s':>8} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'SM busy %':>10} {'errors':>7}")  # fmt: skip

    def show(entry: dict[str, Any]) -> None:
        busy = ", ".join(f"{v:.0f}" for v in entry["gpu_sm_busy_pct"].values())
        print(
            f"{entry['gpus']:>5} {entry['workers_per_gpu']:>11} {entry['rows_per_s']:>12,.0f} "
            f"{entry['rows_per_s'] / top:>9.2f} {entry['requests_per_s']:>8,.0f} "
            f"{entry['latency_ms']['p50']:>7.1f} {entry['latency_ms']['p99']:>7.1f} "
            f"{busy:>10} {sum(entry['errors'].values()):>7}",
            flush=True,
        )

    for per_gpu in map(int, args.workers.split(",")):
        entry = run_served(served, per_gpu, args.gpus, args, work)
        runs.append(entry)
        show(entry)
    scaling = None
    if args.two_gpus:
        best = max(runs, key=lambda r: r["rows_per_s"])
        scale = len(args.two_gpus.split(",")) if args.scale_load else 1
        entry = run_served(served, best["workers_per_gpu"], args.two_gpus, args, work, scale)
        runs.append(entry)
        show(entry)
        scaling = entry["rows_per_s"] / best["rows_per_s"]
        n = len(args.two_gpus.split(","))
        print(f"{n} GPUs / one GPU at {best['workers_per_gpu']} workers per GPU: {scaling:.2f}x")
    results = {
        "model": "dlrm_large (26 tables of 100,000 x 64, MLP 2048-1024-1)",
        "ceiling_rows_per_s": ceilings,
        "runs": runs,
        "two_gpu_scaling": scaling,
    }
    print(f"full results: {record('gpu_serving', vars(args), results, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
