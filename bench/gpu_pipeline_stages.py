"""Where one ONNX Runtime CUDA instance's batch time goes on the pipeline (GPU machine): the
enqueue thread's launch (gather, copies, binding, the run), the wait for the stream, the copy
out, and the rest (hand-offs between the event loop and the two threads), in µs per batch.

    PYTHONPATH=/tmp/site:$PWD python3 -m bench.gpu_pipeline_stages [--rows 1024] [--switch-us 0]

--switch-us sets sys.setswitchinterval (the GIL hand-off interval; Python's default is 5000 µs).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.harness import record
from ferry.engines.base import UNBOUNDED, Device, Feed
from ferry.engines.onnxruntime import OnnxRuntimeOptions
from ferry.engines.onnxruntime_cuda import OnnxRuntimeCudaEngine
from ferry.server.example_repo import write_example_repo


async def stages(path: Path, rows: int, depth: int, runs: int) -> dict[str, float]:
    engine = OnnxRuntimeCudaEngine(path, OnnxRuntimeOptions(in_flight=depth))
    instance = engine.create_instance("s", Device("gpu", 0), UNBOUNDED)
    rng = np.random.default_rng(1)
    part = {
        "dense": rng.standard_normal((rows, 13)).astype(np.float32),
        "sparse": rng.integers(0, 10**6, (rows, 26)).astype(np.int64),
    }
    batch = Feed([part], rows)
    totals = np.zeros(4)
    done = 0

    async def drive(count: int) -> None:
        nonlocal totals, done
        for _ in range(count):
            start = time.perf_counter_ns()
            result = await instance.run(batch)
            total = time.perf_counter_ns() - start
            t = result.timings
            totals += (t.input_ns, t.infer_ns, t.output_ns, total)
            done += 1

    try:
        await asyncio.gather(*(drive(20) for _ in range(depth)))
        totals[:] = 0
        done = 0
        began = time.perf_counter()
        await asyncio.gather(*(drive(runs) for _ in range(depth)))
        elapsed = time.perf_counter() - began
    finally:
        await instance.close()
    mean = totals / done / 1e3
    return {
        "launch": mean[0],
        "wait": mean[1],
        "copy_out": mean[2],
        "total": mean[3],
        "per_batch_wall": elapsed / done * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--switch-us", type=float, default=0)
    parser.add_argument("--out", type=Path, help="folder for the JSON record (bench/results)")
    args = parser.parse_args()
    if args.switch_us:
        sys.setswitchinterval(args.switch_us / 1e6)
    root = Path(tempfile.mkdtemp())
    write_example_repo(root)
    path = root / "dlrm" / "1" / "model.onnx"
    print(f"dlrm, {args.rows} rows, switch interval {sys.getswitchinterval() * 1e6:.0f} µs")
    by_depth = {}
    for depth in (1, 2):
        found = by_depth[depth] = asyncio.run(stages(path, args.rows, depth, args.runs))
        print(f"depth {depth}: " + ", ".join(f"{k} {v:.0f}" for k, v in found.items()))
    results = {"us_by_depth": by_depth}
    print(f"full results: {record('gpu_pipeline_stages', vars(args), results, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
