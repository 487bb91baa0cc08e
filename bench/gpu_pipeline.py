"""GPU pipeline benchmark, on the GPU machine: Ferry's ONNX Runtime CUDA
instances fed pre-formed batches, against ONNX Runtime CUDA called directly at the same batch
sizes, in one process, no gRPC.

    PYTHONPATH=/tmp/site:$PWD python3 -m bench.gpu_pipeline [--model dlrm|dlrm_large]
        [--seconds 3] [--rounds 1] [--out FILE]

direct       session.run with numpy feeds on the CUDA provider: host copies included, one call
             at a time (how ONNX Runtime is usually called)
1x1          one instance, one batch at a time
1x2          one instance, two batches in flight (two slots: the next batch is gathered and
             launched while the GPU runs this one)
2x2          two instances on the same GPU, two batches in flight each
1x2g, 2x2g   the same with CUDA graphs (config `optimization { cuda { graphs: true } }`): each
             batch size captured once, replayed with one launch
Rows/s per batch size and each variant's ratio to direct (measured in the same round). Prints
one table; --out writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import record
from ferry.engines.base import UNBOUNDED, Device, Feed
from ferry.engines.onnxruntime import OnnxRuntimeOptions
from ferry.engines.onnxruntime_cuda import OnnxRuntimeCudaEngine
from ferry.server.example_repo import write_example_repo

BATCHES = (256, 1024, 4096, 16384)
graphs: dict[int, dict[int, list[float]]] = {}  # batch → the first graphed instance's timings
# instances, batches in flight each, CUDA graphs
VARIANTS = {
    "1x1": (1, 1, False),
    "1x2": (1, 2, False),
    "2x2": (2, 2, False),
    "1x2g": (1, 2, True),
    "2x2g": (2, 2, True),
}


def feeds(rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "dense": rng.standard_normal((rows, 13)).astype(np.float32),
        "sparse": rng.integers(0, 10**6, (rows, 26)).astype(np.int64),
    }


def direct(session: Any, rows: int, seconds: float) -> float:
    batch = feeds(rows, np.random.default_rng(1))
    for _ in range(5):
        session.run(None, batch)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, batch)
        done += 1
    return done * rows / (time.perf_counter() - start)


async def ferry(
    engine: OnnxRuntimeCudaEngine, rows: int, seconds: float, instances: int, depth: int
) -> float:
    """Drive `instances` instances with `depth` batches in flight each, as the runner does."""
    made = [engine.create_instance(f"i{i}", Device("gpu", 0), UNBOUNDED) for i in range(instances)]
    batch = Feed([feeds(rows, np.random.default_rng(1))], rows)
    done = 0

    async def drive(instance: Any, until: float) -> None:
        nonlocal done
        while time.perf_counter() < until:
            await instance.run(batch)
            done += 1

    def drivers(until: float) -> list[Any]:
        return [drive(i, until) for i in made for _ in range(depth)]

    try:
        await asyncio.gather(*drivers(time.perf_counter() + 0.5))  # warm up
        done = 0
        start = time.perf_counter()
        await asyncio.gather(*drivers(start + seconds))
        rate = done * rows / (time.perf_counter() - start)
        timings = getattr(made[0], "graph_timings", {})
        if timings:  # rows → µs of a replay and of a plain run, timed at capture
            graphs[rows] = {n: [round(t * 1e6, 1) for t in pair] for n, pair in timings.items()}
        return rate
    finally:
        for instance in made:
            await instance.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="dlrm", choices=["dlrm", "dlrm_large"])
    parser.add_argument("--repo", type=Path, help="a repository that has the model already")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="which of " + ", ".join(VARIANTS)
    )
    parser.add_argument("--out", type=Path, help="folder for the JSON record (bench/results)")
    args = parser.parse_args()
    import onnxruntime as ort

    root = args.repo
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="ferry-gpu-"))
        write_example_repo(root, large=args.model == "dlrm_large")
    path = root / args.model / "1" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    variants = {v: VARIANTS[v] for v in args.variants.split(",")}
    plain = OnnxRuntimeCudaEngine(path, OnnxRuntimeOptions(in_flight=2))
    rounds: list[list[dict[str, Any]]] = []
    for _ in range(args.rounds):
        found = []
        for rows in map(int, args.batches.split(",")):
            # graphs for every power of two up to this batch size (the size itself is one)
            graphed = OnnxRuntimeCudaEngine(
                path, OnnxRuntimeOptions(in_flight=2, cuda_graphs=True), max_batch_size=rows
            )
            base = direct(session, rows, args.seconds)
            entry: dict[str, Any] = {"batch": rows, "direct": base}
            for label, (instances, depth, graphed_variant) in variants.items():
                engine = graphed if graphed_variant else plain
                entry[label] = asyncio.run(ferry(engine, rows, args.seconds, instances, depth))
            found.append(entry)
        rounds.append(found)
    print(f"model {args.model}; rows/s, and in brackets the ratio to direct (median of rounds)")
    print(f"{'batch':>6} {'direct':>12}" + "".join(f" {v:>20}" for v in variants))
    summary = []
    for i, first in enumerate(rounds[0]):
        runs = [r[i] for r in rounds]
        line = {"batch": first["batch"], "direct": statistics.median(r["direct"] for r in runs)}
        text = f"{first['batch']:>6} {line['direct']:>12.0f}"
        for label in variants:
            ratios = [r[label] / r["direct"] for r in runs]
            line[label] = statistics.median(r[label] for r in runs)
            line[f"{label}_ratio"] = statistics.median(ratios)
            line[f"{label}_ratio_range"] = [min(ratios), max(ratios)]
            text += f" {line[label]:>11.0f} ({line[f'{label}_ratio']:.2f})"
            text += " " * 2
        summary.append(line)
        print(text)
    for rows, timings in sorted(graphs.items()):
        kept = [n for n, (replay, plain) in timings.items() if replay <= 0.8 * plain]
        print(f"graphs at batch {rows}: kept sizes {kept}; replay/plain µs {timings}")
    results = {"summary": summary, "graph_timings_us": graphs, "rounds": rounds}
    print(f"full results: {record('gpu_pipeline', vars(args), results, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
