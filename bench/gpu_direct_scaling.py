"""Does the host itself scale to several GPUs? ONNX Runtime CUDA called directly (numpy feeds,
host copies included) in one process per GPU, all at once, against one process on one GPU.

    PYTHONPATH=/tmp/site:$PWD python3 -m bench.gpu_direct_scaling --repo DIR [--gpus 0,1]
        [--rows 16384] [--seconds 8] [--per-gpu 1]

Prints rows/s alone and together, and the scaling; the baseline for what Ferry's several-GPU
runs (bench/gpu_serving.py) can reach on the same host.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench.harness import record


def worker(path: str, device: str, rows: int, seconds: float, start_at: float, out: object) -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    import onnxruntime as ort

    quiet = ort.SessionOptions()
    quiet.log_severity_level = 3
    session = ort.InferenceSession(path, quiet, providers=["CUDAExecutionProvider"])
    rng = np.random.default_rng(1)
    feeds = {
        "dense": rng.standard_normal((rows, 13)).astype(np.float32),
        "sparse": rng.integers(0, 10**9, (rows, 26)).astype(np.int64),
    }
    for _ in range(5):
        session.run(None, feeds)
    while time.time() < start_at:
        time.sleep(0.01)
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        session.run(None, feeds)
        done += 1
    out.put(done * rows / (time.perf_counter() - began))  # type: ignore[attr-defined]


def together(path: str, devices: list[str], rows: int, seconds: float) -> list[float]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start_at = time.time() + 20  # after every process has loaded its session
    processes = [
        context.Process(target=worker, args=(path, d, rows, seconds, start_at, results))
        for d in devices
    ]
    for process in processes:
        process.start()
    found = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--model", default="dlrm_large")
    parser.add_argument("--gpus", default="0,1")
    parser.add_argument("--per-gpu", type=int, default=1, help="processes per GPU")
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, help="folder for the JSON record (bench/results)")
    args = parser.parse_args()
    path = str(args.repo / args.model / "1" / "model.onnx")
    gpus = args.gpus.split(",")
    one = together(path, [gpus[0]] * args.per_gpu, args.rows, args.seconds)
    many = together(path, [g for g in gpus for _ in range(args.per_gpu)], args.rows, args.seconds)
    alone, joint = sum(one), sum(many)
    print(f"{args.model}, {args.rows} rows per call, {args.per_gpu} process(es) per GPU")
    print(f"one GPU: {alone:,.0f} rows/s; GPUs {args.gpus} together: {joint:,.0f} rows/s "
          f"({joint / alone:.2f}x); per process {[round(x) for x in many]}")  # fmt: skip
    path = record(
        "gpu_direct_scaling",
        vars(args),
        {"one_gpu": one, "together": many, "scaling": joint / alone},
        args.out,
    )
    print(f"full results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
