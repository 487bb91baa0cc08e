"""Scheduler benchmarks, every number against a baseline measured in the same run.

(1) Priority isolation: p50/p99 of high-priority single-row requests to `dlrm_ranked` (the dlrm
    model with two priority levels and max_batch_size 256) while a separate load-generator
    process saturates it with low-priority 64-row requests, against the same probe with no
    background load (and, to show what the priorities buy, against the probe sent at the
    background's own low priority).
(1b) The same with `dlrm_reserved` (part `reserved`): dlrm_ranked with two instances, one of
    them reserved for priority level 1 (`ferry.reserved_instances: 1`), against its own probe
    with no background load.
(2) Mixed lengths on `history` (1..512 items; 4 and 32 rows per request): the example config
    (two profiles, padding) against one profile with equal-shape-only batching (same instance
    count).
(3) Oversized: one 10,000-row `dlrm` request (max_batch_size 1024) checked against ONNX Runtime,
    its latency against ONNX Runtime running the same rows as 10 batches of 1,000 directly.

    python -m bench.scheduling [--rounds 3] [--seconds 6] [--parts priority,reserved,...]
                               [--server-cpus 0-1 --client-cpus 2-7]

With --server-cpus and --client-cpus (a machine with more cores than the server should get) the
servers run on the first CPUs only and every client (the probe in this process, the background
load generator) on the others: a server of that many cores with its clients on other machines,
as a deployed sidecar sees it. Without them everything shares the machine's cores.

Rounds alternate baseline and measurement so drift on a noisy machine hits both. Prints one table
per part and writes everything to bench/results/scheduling-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import uvloop

from bench.harness import ROOT, ferry, parse_cpus, python, record, stop
from ferry.loadtest.run import percentiles, run_closed_loop
from ferry.proto import grpc_service_pb2 as pb
from ferry.proto import grpc_service_pb2_grpc as pb_grpc
from ferry.server.example_repo import write_example_repo


def prepare(work: Path) -> tuple[Path, Path]:
    """Two repositories: the examples plus `dlrm_ranked` (dlrm with two priority levels and
    max_batch_size 256), and history without profiles or padding (one plain profile, two
    instances like the example's two profiles)."""
    main = work / "main"
    write_example_repo(main)
    ranked = main / "dlrm_ranked"
    shutil.copytree(main / "dlrm", ranked)
    (ranked / "config.pbtxt").write_text(
        (ranked / "config.pbtxt")
        .read_text()
        .replace('name: "dlrm"', 'name: "dlrm_ranked"')
        .replace("max_batch_size: 1024", "max_batch_size: 256")
        .replace(
            "max_queue_delay_microseconds: 200",
            "max_queue_delay_microseconds: 200\n  priority_levels: 2\n  default_priority_level: 2",
        )
    )
    reserved = main / "dlrm_reserved"
    shutil.copytree(ranked, reserved)
    (reserved / "config.pbtxt").write_text(
        (ranked / "config.pbtxt")
        .read_text()
        .replace('name: "dlrm_ranked"', 'name: "dlrm_reserved"')
        .replace("count: 1 kind: KIND_CPU", "count: 2 kind: KIND_CPU")
        + 'parameters [ { key: "ferry.reserved_instances" value: { string_value: "1" } } ]\n'
    )
    plain = work / "plain"
    (plain / "history").mkdir(parents=True)
    shutil.copytree(main / "history" / "1", plain / "history" / "1")
    text = (main / "history" / "config.pbtxt").read_text()
    text = text[: text.index("# Two optimization profiles")]
    (plain / "history" / "config.pbtxt").write_text(
        text.replace("count: 1 kind: KIND_CPU", "count: 2 kind: KIND_CPU")
    )
    return main, plain


async def probe(address: str, seconds: float, priority: int, model: str) -> dict[str, float]:
    """Single-row dlrm requests one after another; latency percentiles in ms."""
    rng = np.random.default_rng(3)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="dense", datatype="FP32", shape=[1, 13])
    request.inputs.add(name="sparse", datatype="INT64", shape=[1, 26])
    request.raw_input_contents.append(rng.standard_normal((1, 13)).astype(np.float32).tobytes())
    request.raw_input_contents.append(rng.integers(0, 1000, (1, 26)).astype(np.int64).tobytes())
    request.parameters["priority"].uint64_param = priority
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(20):
            await stub.ModelInfer(request)
        samples: list[float] = []
        stop_at = time.perf_counter() + seconds
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await stub.ModelInfer(request)
            samples.append(time.perf_counter() - t0)
            await asyncio.sleep(0.002)  # a trickle, not a second load
    result = percentiles(samples)
    result["requests"] = len(samples)
    return result


def background(
    address: str,
    seconds: float,
    out: Path,
    model: str,
    cpus: set[int] | None = None,
    nice: int = 0,
) -> subprocess.Popen[bytes]:
    """A separate load-generator process: low-priority 64-row dlrm requests, saturating.

    nice > 0 lowers its CPU priority: on a machine where it must share the server's cores, its
    own CPU then weighs less than that of clients on other machines would (zero)."""
    command = [*python(cpus), "loadtest/run.py", "--address", address, "--model", model]
    if nice:
        renice = "import os, sys; os.nice(int(sys.argv[1])); os.execv(sys.argv[2], sys.argv[2:])"
        command = [sys.executable, "-c", renice, str(nice), *command]
    options = ["--concurrency", "64", "--rows", "64", "--priority", "2", "--warmup", "0.5"]
    return subprocess.Popen(
        [*command, *options, "--duration", str(seconds), "--json", str(out)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )


def priority_round(
    address: str,
    seconds: float,
    work: Path,
    model: str = "dlrm_ranked",
    same: bool = True,
    client_cpus: set[int] | None = None,
    background_nice: int = 0,
) -> dict[str, Any]:
    alone = uvloop.run(probe(address, seconds, priority=1, model=model))
    loaded: dict[str, Any] = {}
    probes = (("high", 1), ("same_as_background", 2)) if same else (("high", 1),)
    for label, priority in probes:
        out = work / f"background-{label}.json"
        load = background(address, seconds + 2.0, out, model, client_cpus, background_nice)
        time.sleep(1.5)
        loaded[label] = uvloop.run(probe(address, seconds, priority=priority, model=model))
        load.wait(timeout=seconds + 60)
        loaded[label]["background_rows_per_s"] = json.loads(out.read_text())["rows_per_s"]
    found = {
        "model": model,
        "alone_ms": alone,
        "loaded_high_ms": loaded["high"],
        "p99_ratio_high": loaded["high"]["p99"] / alone["p99"],
    }
    if same:
        found["loaded_same_priority_ms"] = loaded["same_as_background"]
        found["p99_ratio_same_priority"] = loaded["same_as_background"]["p99"] / alone["p99"]
    return found


def mixed_round(padded: str, plain: str, seconds: float, rows: int) -> dict[str, Any]:
    out: dict[str, Any] = {"rows_per_request": rows}
    for label, address in (("plain", plain), ("profiles_padding", padded)):
        result = uvloop.run(
            run_closed_loop(
                address,
                "history",
                concurrency=32,
                rows=rows,
                duration_s=seconds,
                free_dim=(1, 512),
                id_range=10_000,
            )
        )
        out[label] = {
            "rows_per_s": result.rows_per_s,
            "latency_ms": result.latency_ms,
            "errors": result.errors,
        }
    out["throughput_ratio"] = out["profiles_padding"]["rows_per_s"] / out["plain"]["rows_per_s"]
    out["p99_ratio"] = (
        out["profiles_padding"]["latency_ms"]["p99"] / out["plain"]["latency_ms"]["p99"]
    )
    return out


def oversized_round(address: str, model: Path, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(11)
    dense = rng.standard_normal((10_000, 13)).astype(np.float32)
    sparse = rng.integers(0, 10**6, (10_000, 26)).astype(np.int64)
    request = pb.ModelInferRequest(model_name="dlrm")
    request.inputs.add(name="dense", datatype="FP32", shape=[10_000, 13])
    request.inputs.add(name="sparse", datatype="INT64", shape=[10_000, 26])
    request.raw_input_contents.extend([dense.tobytes(), sparse.tobytes()])
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    # The baseline runs in this process on the server's cores: its idle threads must not spin
    # (ONNX Runtime's default) while the server is being timed.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"dense": dense, "sparse": sparse})
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.ModelInfer(request)
        got = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(10_000, 1)
        correct = bool(np.allclose(got, expected, rtol=1e-5, atol=1e-6))
        served = []
        direct = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            stub.ModelInfer(request)
            served.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for start in range(0, 10_000, 1_000):
                end = start + 1_000
                session.run(None, {"dense": dense[start:end], "sparse": sparse[start:end]})
            direct.append(time.perf_counter() - t0)
    served_ms = float(np.median(served) * 1e3)
    direct_ms = float(np.median(direct) * 1e3)
    return {
        "correct": correct,
        "served_ms": served_ms,
        "direct_10x1000_ms": direct_ms,
        "ratio": served_ms / direct_ms,
    }


def spread(values: list[float]) -> str:
    return f"{np.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument(
        "--parts",
        default="priority,reserved,mixed,oversized",
        help="which parts to run (comma-separated): priority, reserved, mixed, oversized",
    )
    parser.add_argument("--server-cpus", help="CPUs the servers run on, e.g. 0-1")
    parser.add_argument("--client-cpus", help="CPUs every client runs on, e.g. 2-7")
    parser.add_argument(
        "--background-nice",
        type=int,
        default=0,
        help="niceness of the background load generator (parts priority, reserved); 0: as is",
    )
    parser.add_argument(
        "--server-args", default="", help="more `ferry serve` flags, e.g. '--access-log F'"
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if (args.server_cpus is None) != (args.client_cpus is None):
        parser.error("--server-cpus and --client-cpus go together")
    server_cpus = parse_cpus(args.server_cpus) if args.server_cpus else None
    client_cpus = parse_cpus(args.client_cpus) if args.client_cpus else None
    if server_cpus is not None and "oversized" in parts:
        parser.error("part oversized times ONNX Runtime in this process: run it unpinned")
    if client_cpus is not None:
        os.sched_setaffinity(0, client_cpus)  # the probe; before any gRPC thread starts

    work = Path(tempfile.mkdtemp(prefix="ferry-sched-"))
    main_repo, plain_repo = prepare(work)
    server, address = ferry(
        main_repo, work / "ferry.log", *args.server_args.split(), cpus=server_cpus
    )
    plain_server, plain_address = ferry(plain_repo, work / "plain.log", cpus=server_cpus)
    rounds: list[dict[str, Any]] = []
    try:
        for _ in range(args.rounds):
            found: dict[str, Any] = {}
            if "priority" in parts:
                found["priority"] = priority_round(
                    address,
                    args.seconds,
                    work,
                    client_cpus=client_cpus,
                    background_nice=args.background_nice,
                )
            if "reserved" in parts:
                found["reserved"] = priority_round(
                    address,
                    args.seconds,
                    work,
                    "dlrm_reserved",
                    False,
                    client_cpus,
                    args.background_nice,
                )
            if "mixed" in parts:
                found["mixed"] = [
                    mixed_round(address, plain_address, args.seconds, rows) for rows in (4, 32)
                ]
            if "oversized" in parts:
                found["oversized"] = oversized_round(
                    address, main_repo / "dlrm" / "1" / "model.onnx", repeats=5
                )
            rounds.append(found)
    finally:
        stop(server)
        stop(plain_server)

    if "priority" in parts:
        report_priority(rounds)
    if "reserved" in parts:
        report_reserved(rounds)
    if "mixed" in parts:
        report_mixed(rounds)
    if "oversized" in parts:
        report_oversized(rounds)
    path = record("scheduling", vars(args), {"rounds": rounds})
    print(f"full results: {path.relative_to(ROOT)}")
    return 0


def report_priority(rounds: list[dict[str, Any]]) -> None:
    print("(1) priority isolation: high-priority 1-row probe, p50/p99 ms")
    print(
        f"{'round':>5} {'alone':>15} {'loaded, high':>15} {'loaded, same':>15} "
        f"{'x high':>7} {'x same':>7}"
    )
    for i, r in enumerate(rounds):
        p = r["priority"]
        print(
            f"{i + 1:>5} {p['alone_ms']['p50']:>6.2f}/{p['alone_ms']['p99']:<8.2f}"
            f"{p['loaded_high_ms']['p50']:>6.2f}/{p['loaded_high_ms']['p99']:<8.2f}"
            f"{p['loaded_same_priority_ms']['p50']:>6.2f}/{p['loaded_same_priority_ms']['p99']:<8.2f}"
            f"{p['p99_ratio_high']:>7.2f} {p['p99_ratio_same_priority']:>7.2f}"
        )
    print(
        "p99 loaded/alone, high priority:    "
        + spread([r["priority"]["p99_ratio_high"] for r in rounds])
    )
    print(
        "p99 loaded/alone, same priority:    "
        + spread([r["priority"]["p99_ratio_same_priority"] for r in rounds])
    )
    print()


def report_reserved(rounds: list[dict[str, Any]]) -> None:
    print(
        "(1b) dlrm_reserved (2 instances, 1 reserved for level 1): high-priority probe, p50/p99 ms"
    )
    print(
        f"{'round':>5} {'alone':>15} {'loaded, high':>15} {'x high':>7} {'background rows/s':>18}"
    )
    for i, r in enumerate(rounds):
        p = r["reserved"]
        print(
            f"{i + 1:>5} {p['alone_ms']['p50']:>6.2f}/{p['alone_ms']['p99']:<8.2f}"
            f"{p['loaded_high_ms']['p50']:>6.2f}/{p['loaded_high_ms']['p99']:<8.2f}"
            f"{p['p99_ratio_high']:>7.2f} {p['loaded_high_ms']['background_rows_per_s']:>18.0f}"
        )
    print(
        "p99 loaded/alone, reserved instance: "
        + spread([r["reserved"]["p99_ratio_high"] for r in rounds])
    )
    if all("priority" in r for r in rounds):
        background = [r["priority"]["loaded_high_ms"]["background_rows_per_s"] for r in rounds]
        print(f"background rows/s without reservation (part priority): {spread(background)}")
    print()


def report_mixed(rounds: list[dict[str, Any]]) -> None:
    print("(2) history, lengths 1..512: rows/s and p99 ms")
    print(
        f"{'round':>5} {'rows/req':>8} {'plain rows/s':>13} {'p99':>8} {'profiles+pad rows/s':>20} "
        f"{'p99':>8} {'x rows/s':>9} {'x p99':>6}"
    )
    for i, r in enumerate(rounds):
        for m in r["mixed"]:
            print(
                f"{i + 1:>5} {m['rows_per_request']:>8} {m['plain']['rows_per_s']:>13.0f} "
                f"{m['plain']['latency_ms']['p99']:>8.2f} "
                f"{m['profiles_padding']['rows_per_s']:>20.0f} "
                f"{m['profiles_padding']['latency_ms']['p99']:>8.2f} {m['throughput_ratio']:>9.2f} "
                f"{m['p99_ratio']:>6.2f}"
            )
    for k, rows in enumerate((4, 32)):
        ratios = [r["mixed"][k]["throughput_ratio"] for r in rounds]
        p99s = [r["mixed"][k]["p99_ratio"] for r in rounds]
        print(f"{rows:>2} rows: throughput profiles+padding / plain: {spread(ratios)}")
        print(f"{rows:>2} rows: p99 profiles+padding / plain:        {spread(p99s)}")
    print()


def report_oversized(rounds: list[dict[str, Any]]) -> None:
    print("(3) one 10,000-row dlrm request (max_batch_size 1024)")
    for i, r in enumerate(rounds):
        o = r["oversized"]
        print(
            f"{i + 1:>5} correct {o['correct']}  served {o['served_ms']:.1f} ms  "
            f"direct 10 x 1000 rows {o['direct_10x1000_ms']:.1f} ms  ratio {o['ratio']:.2f}"
        )
    print(
        "served / direct 10 batches:          " + spread([r["oversized"]["ratio"] for r in rounds])
    )


if __name__ == "__main__":
    sys.exit(main())
