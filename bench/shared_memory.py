"""System shared memory against plain gRPC: `dlrm` with 1,024-row requests (266 KB of inputs),
one request in flight, interleaved in one run; and `echo` with the same bytes each way
(1,024 x 64 FP32 in and out), where the model costs next to nothing and the transport shows.

    python -m bench.shared_memory [--rounds 3] [--calls 300]

Plain: inputs in the message, output in the answer. Shared memory: the client writes its inputs
into a registered region for each request and reads the output from another; the message carries
only the tensors' descriptions. Reports p50/p99 latency and the server's CPU time per request
(from /proc), and the shared-memory / plain ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as tc
import tritonclient.utils.shared_memory as shm

from bench.harness import ferry, process_cpu_s, record, stop
from ferry.server.example_repo import write_example_repo

ROWS = 1024
SLICE = 50


@dataclass(frozen=True)
class Workload:
    model: str
    inputs: dict[str, np.ndarray]
    output: str
    output_shape: list[int]

    @property
    def output_bytes(self) -> int:
        return int(np.prod(self.output_shape)) * 4


def workloads(rng: np.random.Generator) -> list[Workload]:
    dense = rng.standard_normal((ROWS, 13)).astype(np.float32)
    sparse = rng.integers(0, 1_000_000, (ROWS, 26)).astype(np.int64)
    echo = rng.standard_normal((ROWS, 64)).astype(np.float32)
    return [
        Workload("dlrm", {"dense": dense, "sparse": sparse}, "ctr", [ROWS, 1]),
        Workload("echo", {"x": echo}, "y", [ROWS, 64]),
    ]


def _described(work: Workload) -> list[tc.InferInput]:
    return [
        tc.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT64")
        for name, array in work.inputs.items()
    ]


def plain_call(client: tc.InferenceServerClient, work: Workload) -> Callable[[], np.ndarray]:
    def call() -> np.ndarray:
        inputs = _described(work)
        for tensor, array in zip(inputs, work.inputs.values(), strict=True):
            tensor.set_data_from_numpy(array)
        return np.asarray(client.infer(work.model, inputs).as_numpy(work.output))

    return call


def shm_call(client: tc.InferenceServerClient, work: Workload, handles: list[Any]
             ) -> Callable[[], np.ndarray]:  # fmt: skip
    tag = f"{work.model}{int(time.time())}"
    arrays = list(work.inputs.values())
    size_in = sum(a.nbytes for a in arrays)
    in_handle = shm.create_shared_memory_region(f"in{tag}", f"/ferry_bench_in{tag}", size_in)
    out_handle = shm.create_shared_memory_region(
        f"out{tag}", f"/ferry_bench_out{tag}", work.output_bytes
    )
    handles += [in_handle, out_handle]
    client.register_system_shared_memory(f"in{tag}", f"/ferry_bench_in{tag}", size_in)
    client.register_system_shared_memory(f"out{tag}", f"/ferry_bench_out{tag}", work.output_bytes)

    def call() -> np.ndarray:
        shm.set_shared_memory_region(in_handle, arrays)
        inputs = _described(work)
        offset = 0
        for tensor, array in zip(inputs, arrays, strict=True):
            tensor.set_shared_memory(f"in{tag}", array.nbytes, offset=offset)
            offset += array.nbytes
        output = tc.InferRequestedOutput(work.output)
        output.set_shared_memory(f"out{tag}", work.output_bytes)
        client.infer(work.model, inputs, outputs=[output])
        return np.array(shm.get_contents_as_numpy(out_handle, np.float32, work.output_shape))

    return call


def one_round(calls: dict[str, Callable[[], np.ndarray]], pid: int, n: int) -> dict[str, Any]:
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, float] = dict.fromkeys(calls, 0.0)
    for call in calls.values():  # warm-up
        for _ in range(10):
            call()
    for _ in range(n // SLICE):
        for name, call in calls.items():
            before = process_cpu_s(pid)
            for _ in range(SLICE):
                t0 = time.perf_counter()
                call()
                latencies[name].append(time.perf_counter() - t0)
            cpu[name] += process_cpu_s(pid) - before
    result: dict[str, Any] = {
        name: {
            "p50_ms": float(np.percentile(v, 50) * 1e3),
            "p99_ms": float(np.percentile(v, 99) * 1e3),
            "server_cpu_ms_per_request": cpu[name] / len(v) * 1e3,
        }
        for name, v in latencies.items()
    }
    result["p50_ratio"] = result["shm"]["p50_ms"] / result["plain"]["p50_ms"]
    result["cpu_ratio"] = (
        result["shm"]["server_cpu_ms_per_request"] / result["plain"]["server_cpu_ms_per_request"]
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-shm-bench-"))
    write_example_repo(work / "models")
    server, address = ferry(work / "models", work / "ferry.log")
    handles: list[Any] = []
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        client = tc.InferenceServerClient(address)
        for work in workloads(np.random.default_rng(0)):
            calls = {"plain": plain_call(client, work), "shm": shm_call(client, work, handles)}
            np.testing.assert_array_equal(calls["plain"](), calls["shm"]())  # same answers
            results[work.model] = [
                one_round(calls, server.pid, args.calls) for _ in range(args.rounds)
            ]
        client.unregister_system_shared_memory()
    finally:
        stop(server)
        for handle in handles:
            shm.destroy_shared_memory_region(handle)
    summary: dict[str, Any] = {}
    for model, rounds in results.items():
        print(model)
        summary[model] = report(rounds)
    path = record("shared_memory", vars(args), {"rounds": results, "summary": summary})
    print(f"wrote {path}")
    return 0


def report(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    for index, r in enumerate(rounds):
        plain, shared = r["plain"], r["shm"]
        print(f"round {index}: plain p50 {plain['p50_ms']:.2f} ms, server CPU "
              f"{plain['server_cpu_ms_per_request']:.2f} ms/request; shm p50 "
              f"{shared['p50_ms']:.2f} ms, server CPU {shared['server_cpu_ms_per_request']:.2f}"
              f" ms/request; ratios p50 {r['p50_ratio']:.2f}, CPU {r['cpu_ratio']:.2f}")
    summary = {
        key: {"median": statistics.median(r[key] for r in rounds),
              "min": min(r[key] for r in rounds), "max": max(r[key] for r in rounds)}
        for key in ("p50_ratio", "cpu_ratio")
    }  # fmt: skip
    print(f"shm / plain: p50 {summary['p50_ratio']['median']:.2f} "
          f"({summary['p50_ratio']['min']:.2f}-{summary['p50_ratio']['max']:.2f}), server CPU "
          f"{summary['cpu_ratio']['median']:.2f} ({summary['cpu_ratio']['min']:.2f}-"
          f"{summary['cpu_ratio']['max']:.2f})")  # fmt: skip
    return summary


if __name__ == "__main__":
    sys.exit(main())
