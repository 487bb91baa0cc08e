"""GPU pipeline benchmark (issue 6, part 1), on the GPU machine: Ferry's ONNX Runtime CUDA
instances fed pre-formed batches, against ONNX Runtime CUDA called directly at the same batch
sizes, in one process, no gRPC.

    PYTHONPATH=/tmp/site:$PWD python3 bench/gpu_pipeline.py [--seconds 3] [--out FILE]

direct       session.run with numpy feeds on the CUDA provider: host copies included, one call
             at a time (how ONNX Runtime is usually called)
ferry x1     one instance: gather into pinned memory, copies and model on its own stream
ferry x2     two instances on the same GPU, one batch in flight on each (copies overlap compute)
Rows/s per batch size and each Ferry variant's ratio to direct. Prints one table; --out writes
the numbers as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines.base import UNBOUNDED, Device, Feed
from engines.onnxruntime_cuda import OnnxRuntimeCudaEngine
from server.example_repo import write_example_repo

BATCHES = (256, 1024, 4096, 16384)


def feeds(rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "dense": rng.standard_normal((rows, 13)).astype(np.float32),
        "sparse": rng.integers(0, 10**6, (rows, 26)).astype(np.int64),
    }


def direct(path: Path, rows: int, seconds: float) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    batch = feeds(rows, np.random.default_rng(1))
    for _ in range(5):
        session.run(None, batch)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, batch)
        done += 1
    return done * rows / (time.perf_counter() - start)


async def stages(path: Path, rows: int, runs: int = 300) -> dict[str, float]:
    """Where one instance's batch time goes (µs, means): enqueue (gather, copies, model launch)
    on its thread, waiting for the stream, copy out, and the rest (the thread hand-off)."""
    engine = OnnxRuntimeCudaEngine(path)
    instance = engine.create_instance("s", Device("gpu", 0), UNBOUNDED)
    batch = Feed([feeds(rows, np.random.default_rng(1))], rows)
    try:
        for _ in range(20):
            await instance.run(batch)
        totals = np.zeros(4)
        for _ in range(runs):
            start = time.perf_counter_ns()
            result = await instance.run(batch)
            total = time.perf_counter_ns() - start
            t = result.timings
            totals += (
                t.input_ns,
                t.infer_ns,
                t.output_ns,
                total - t.input_ns - t.infer_ns - t.output_ns,
            )
        mean = totals / runs / 1e3
        return dict(zip(("enqueue", "wait", "copy_out", "hand_off"), map(float, mean), strict=True))
    finally:
        await instance.close()


async def ferry(path: Path, rows: int, seconds: float, instances: int) -> float:
    engine = OnnxRuntimeCudaEngine(path)
    made = [engine.create_instance(f"i{i}", Device("gpu", 0), UNBOUNDED) for i in range(instances)]
    batch = Feed([feeds(rows, np.random.default_rng(1))], rows)
    done = 0

    async def drive(instance: Any, until: float) -> None:
        nonlocal done
        while time.perf_counter() < until:
            await instance.run(batch)
            done += 1

    try:
        await asyncio.gather(*(drive(i, time.perf_counter() + 0.5) for i in made))  # warm up
        done = 0
        start = time.perf_counter()
        await asyncio.gather(*(drive(i, start + seconds) for i in made))
        return done * rows / (time.perf_counter() - start)
    finally:
        for instance in made:
            await instance.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ferry-gpu-"))
    write_example_repo(root)
    path = root / "dlrm" / "1" / "model.onnx"
    rows_out: list[dict[str, Any]] = []
    print(
        f"{'batch':>6} {'direct rows/s':>14} {'ferry x1':>12} {'x1/direct':>10} "
        f"{'ferry x2':>12} {'x2/direct':>10}"
    )
    for rows in BATCHES:
        base = direct(path, rows, args.seconds)
        one = asyncio.run(ferry(path, rows, args.seconds, 1))
        two = asyncio.run(ferry(path, rows, args.seconds, 2))
        split = asyncio.run(stages(path, rows))
        rows_out.append(
            {"batch": rows, "direct": base, "ferry_x1": one, "ferry_x2": two, "stages_us": split}
        )
        print(
            f"{rows:>6} {base:>14.0f} {one:>12.0f} {one / base:>10.2f} "
            f"{two:>12.0f} {two / base:>10.2f}"
        )
    print(
        "one instance, µs per batch: "
        + "; ".join(
            f"{r['batch']}: " + ", ".join(f"{k} {v:.0f}" for k, v in r["stages_us"].items())
            for r in rows_out
        )
    )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "benchmark": "gpu_pipeline",
                    "command": " ".join(["python3", *sys.argv]),
                    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "machine": f"{platform.node()} {platform.machine()}, Python "
                    f"{platform.python_version()}",
                    "model": "example dlrm (26 tables of 1000 x 16, MLP 512-256-1)",
                    "rows": rows_out,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
