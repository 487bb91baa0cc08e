"""Serving-core benchmark, every number against a baseline measured in the same run.

(a) dlrm throughput: ONNX Runtime called directly at its best batch size (rows/s) against rows/s
    served by Ferry under many concurrent 64-row requests (loadtest closed loop, same machine, at
    its best concurrency). Server and client CPU per request are measured too, and with them the
    ceiling that gRPC's per-request cost leaves on this machine (see docs/benchmarks.md): with
    Ferry's costs (64-row requests to its `echo`), and with those of the bare grpc.aio server
    alone, client on these cores or (server CPU only) elsewhere. Measured for the example `dlrm`
    (the DLRM paper's reference sizes, ~2.4M multiply-adds per row) and for `dlrm_small`, the
    seven times lighter model, where the per-request cost of Python gRPC
    weighs seven times as much.
(b) echo latency: p50/p99 of single small requests to Ferry's `echo` against a bare grpc.aio
    echo server (bench/bare_echo_server.py), the floor for Python gRPC here; the two are probed
    in alternating short slices so that the machine's drift hits both alike.

    python -m bench.serving_core [--rounds 3] [--seconds 8] [--concurrency 64 256]
                                 [--models dlrm dlrm_small]
                                 [--server-cpus 0,1 --client-cpus 2-7]

With --server-cpus and --client-cpus, the servers and the direct ONNX Runtime baseline run on
the first CPUs only and the load generator and probes on the others: a server of that many cores
with its clients on other machines. Without them everything shares the machine's cores.

Rounds alternate baseline and Ferry so drift on a noisy machine hits both. Prints one table and
writes the full results as JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import uvloop

from bench.harness import (
    ROOT,
    parse_cpus,
    process_cpu_s,
    python,
    record,
    start,
    timed_calls,
)
from bench.harness import ferry as start_ferry
from ferry.loadtest.run import LoadResult, percentiles, run_closed_loop
from ferry.proto import grpc_service_pb2 as pb
from ferry.proto import grpc_service_pb2_grpc as pb_grpc
from ferry.server.example_repo import DlrmShape, dlrm_model, write_example_repo


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measured_load(
    server_pid: int, address: str, model: str, **kwargs: float | int
) -> tuple[LoadResult, float, float]:
    """A closed-loop run, with the server's and this client's CPU microseconds per request."""
    server0, client0 = process_cpu_s(server_pid), own_cpu_s()
    result = uvloop.run(run_closed_loop(address, model, warmup_s=0.5, **kwargs))  # type: ignore[arg-type]
    server_us = (process_cpu_s(server_pid) - server0) * 1e6
    client_us = (own_cpu_s() - client0) * 1e6
    # Both CPU figures span warm-up too; count its requests at the measured rate.
    requests = max(1.0, result.requests_per_s * (result.duration_s + 0.5))
    return result, server_us / requests, client_us / requests


def echo64(pid: int, address: str, concurrency: int, seconds: float) -> tuple[float, float]:
    """Server and client CPU µs per 64-row `echo` request (no model work)."""
    _, server_us, client_us = measured_load(
        pid, address, "echo", concurrency=concurrency, rows=64, duration_s=seconds
    )
    return server_us, client_us


async def interleaved_echo(
    bare: str, ferry: str, seconds: float, slices: int = 8
) -> tuple[dict[str, float], dict[str, float]]:
    """One request in flight, 1 row x 16 FP32, alternating between the two servers in short
    slices so that the machine's drift (other load, frequency, caches) hits both alike."""
    request = pb.ModelInferRequest(model_name="echo")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(np.ones((1, 16), np.float32).tobytes())
    samples: dict[str, list[float]] = {bare: [], ferry: []}
    channels = {a: grpc.aio.insecure_channel(a) for a in samples}
    try:
        stubs = {a: pb_grpc.GRPCInferenceServiceStub(c) for a, c in channels.items()}
        for stub in stubs.values():  # connect and warm up
            for _ in range(200):
                await stub.ModelInfer(request)
        for i in range(2 * slices):
            address = (bare, ferry)[i % 2]
            call = functools.partial(stubs[address].ModelInfer, request)
            await timed_calls(call, seconds / slices, samples[address])  # each: `seconds` in all
    finally:
        for channel in channels.values():
            await channel.close()
    return percentiles(samples[bare]), percentiles(samples[ferry])


def direct_dlrm(model: Path, seconds: float, cpus: set[int] | None = None) -> dict[str, float]:
    """rows/s of ONNX Runtime alone at several batch sizes (on the server's cores: all of them,
    or `cpus`)."""
    back = os.sched_getaffinity(0) if cpus is not None else None
    if cpus is not None:
        os.sched_setaffinity(0, cpus)  # the session's threads, started below, inherit it
    try:
        return _direct_rates(model, seconds, len(cpus) if cpus else os.cpu_count() or 1)
    finally:
        if back is not None:
            os.sched_setaffinity(0, back)


def _direct_rates(model: Path, seconds: float, threads: int) -> dict[str, float]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
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


SMALL_DLRM = DlrmShape(26, 1000, 16, (13, 64, 16), (512, 256, 1), interaction="concat")
"""A light DLRM: a seventh of the reference DLRM's multiply-adds per row. Measured beside it
so that the served/direct ratio of both model sizes stays visible."""


def add_small_dlrm(repo: Path) -> None:
    folder = repo / "dlrm_small"
    (folder / "1").mkdir(parents=True)
    config = (repo / "dlrm" / "config.pbtxt").read_text()
    (folder / "config.pbtxt").write_text(config.replace('name: "dlrm"', 'name: "dlrm_small"'))
    model = dlrm_model(SMALL_DLRM, "dlrm_small")
    (folder / "1" / "model.onnx").write_bytes(model.SerializeToString(deterministic=True))


def throughput(
    model: str,
    repo: Path,
    pid: int,
    address: str,
    args: argparse.Namespace,
    server_cpus: set[int] | None,
) -> dict[str, Any]:
    """(a) for one dlrm-shaped model: direct rows/s at the best batch size, served rows/s at the
    best concurrency, and the CPU each side spent per request."""
    direct = direct_dlrm(repo / model / "1" / "model.onnx", args.seconds / 2, server_cpus)
    best = max(direct.values())
    served: list[dict[str, Any]] = []
    for concurrency in args.concurrency:
        run, server_us, client_us = measured_load(
            pid,
            address,
            model,
            concurrency=concurrency,
            rows=64,
            duration_s=args.seconds,
            id_range=1000,
        )
        served.append(
            {
                "concurrency": concurrency,
                "rows_per_s": run.rows_per_s,
                "errors": run.errors,
                "latency_ms": run.latency_ms,
                "server_cpu_us_per_request": server_us,
                "client_cpu_us_per_request": client_us,
            }
        )
    top = max(served, key=lambda s: s["rows_per_s"])
    return {
        "direct_rows_per_s": direct,
        "served": served,
        "served_rows_per_s": top["rows_per_s"],
        "served_concurrency": top["concurrency"],
        "throughput_ratio": top["rows_per_s"] / best,
    }


def ceilings(found: dict[str, Any], cores: int, costs: dict[str, float]) -> None:
    """Add to `found` the most rows/s a server paying the measured per-request costs could serve
    on these cores, given ONNX Runtime's own CPU per row (direct run, all cores busy)."""
    best = max(found["direct_rows_per_s"].values())
    per_request = 64 * cores * 1e6 / best
    found["ort_cpu_us_per_row"] = per_request / 64

    def ceiling(*costs_us: float) -> float:
        return cores * 1e6 / (sum(costs_us) + per_request) * 64

    ferry = ceiling(costs["echo64_server"], costs["echo64_client"])
    found["grpc_ceiling_rows_per_s"] = ferry
    found["ceiling_ratio"] = ferry / best
    found["served_of_ceiling"] = found["served_rows_per_s"] / ferry
    found["bare_ceiling_ratio"] = ceiling(costs["bare64_server"], costs["bare64_client"]) / best
    found["bare_server_only_ceiling_ratio"] = ceiling(costs["bare64_server"]) / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["dlrm", "dlrm_small"],
        help="models for (a): the example dlrm and/or the light dlrm_small",
    )
    parser.add_argument("--server-cpus", help="CPUs the servers and direct ONNX Runtime use")
    parser.add_argument("--client-cpus", help="CPUs the load generator and probes use")
    args = parser.parse_args()
    if (args.server_cpus is None) != (args.client_cpus is None):
        parser.error("--server-cpus and --client-cpus go together")
    server_cpus = parse_cpus(args.server_cpus) if args.server_cpus else None
    if args.client_cpus:
        os.sched_setaffinity(0, parse_cpus(args.client_cpus))  # before any gRPC thread starts

    work = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
    repo = work / "models"
    write_example_repo(repo)
    add_small_dlrm(repo)
    ferry, ferry_addr = start_ferry(repo, work / "ferry.log", cpus=server_cpus)
    rounds: list[dict[str, Any]] = []
    bare_command = [*python(server_cpus), "-m", "bench.bare_echo_server"]
    bare, bare_addr = start(bare_command, work / "bare.log")
    cores = len(server_cpus) if server_cpus else os.cpu_count() or 1
    try:
        for _ in range(args.rounds):
            found: dict[str, Any] = {
                model: throughput(model, repo, ferry.pid, ferry_addr, args, server_cpus)
                for model in args.models
            }
            concurrency = int(found[args.models[0]]["served_concurrency"])
            # 64-row `echo` loads (no model work): what gRPC and Ferry cost per request on each
            # side; then the same to the bare grpc.aio server, the cost of Python gRPC alone.
            costs: dict[str, float] = {}
            costs["echo64_server"], costs["echo64_client"] = echo64(
                ferry.pid, ferry_addr, concurrency, args.seconds / 2
            )
            costs["bare64_server"], costs["bare64_client"] = echo64(
                bare.pid, bare_addr, concurrency, args.seconds / 2
            )
            for model in args.models:
                ceilings(found[model], cores, costs)
            floor, echo = uvloop.run(interleaved_echo(bare_addr, ferry_addr, args.seconds))
            found.update({f"{k}_cpu_us_per_request": v for k, v in costs.items()})
            found.update(
                {
                    "bare_echo_ms": floor,
                    "ferry_echo_ms": echo,
                    "echo_p50_ratio": echo["p50"] / floor["p50"],
                    "echo_p99_ratio": echo["p99"] / floor["p99"],
                }
            )
            rounds.append(found)
    finally:
        for process in (ferry, bare):
            process.terminate()
            process.wait(timeout=30)

    def spread(values: list[float]) -> str:
        return f"{np.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"

    for model in args.models:
        print(f"(a) {model}, 64-row requests")
        print(
            f"{'round':>5} {'direct rows/s':>14} {'served rows/s':>14} {'conc':>5} {'ratio':>6} "
            f"{'ceiling':>8} {'srv/cli us/req':>15}"
        )
        for i, r in enumerate(rounds):
            m = r[model]
            top = max(m["served"], key=lambda s: s["rows_per_s"])
            print(
                f"{i + 1:>5} {max(m['direct_rows_per_s'].values()):>14.0f} "
                f"{m['served_rows_per_s']:>14.0f} {m['served_concurrency']:>5} "
                f"{m['throughput_ratio']:>6.2f} {m['ceiling_ratio']:>8.2f} "
                f"{top['server_cpu_us_per_request']:>7.0f}/{top['client_cpu_us_per_request']:<7.0f}"
            )

        def of(key: str, model: str = model) -> str:
            return spread([r[model][key] for r in rounds])

        print(f"throughput ratio served/direct: {of('throughput_ratio')}")
        print(f"gRPC ceiling / direct:          {of('ceiling_ratio')}")
        print(f"served / gRPC ceiling:          {of('served_of_ceiling')}")
        print(f"bare grpc.aio ceiling / direct: {of('bare_ceiling_ratio')}")
        print(f"  same, client on other cores:  {of('bare_server_only_ceiling_ratio')}")
    print("(b) echo, one 1-row request in flight")
    print(f"{'round':>5} {'bare p50/p99 ms':>16} {'ferry p50/p99 ms':>17} {'p50 x':>6}")
    for i, r in enumerate(rounds):
        print(
            f"{i + 1:>5} {r['bare_echo_ms']['p50']:>7.3f}/{r['bare_echo_ms']['p99']:<8.3f} "
            f"{r['ferry_echo_ms']['p50']:>8.3f}/{r['ferry_echo_ms']['p99']:<8.3f} "
            f"{r['echo_p50_ratio']:>6.2f}"
        )
    print(f"echo p50 ratio ferry/bare:      {spread([r['echo_p50_ratio'] for r in rounds])}")
    print(f"echo p99 ratio ferry/bare:      {spread([r['echo_p99_ratio'] for r in rounds])}")

    path = record("serving_core", vars(args), {"rounds": rounds})
    print(f"full results: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
