"""Echo latency of Ferry built from several source trees, against the bare grpc.aio floor.

Target (b) of the serving core (Ferry's echo p50 <= 1.5x the bare server's) moves by a few
percent per change, less than the drift between two runs on a noisy machine. This script
compares versions in one run instead: the bare server (bench/bare_echo_server.py) and one Ferry
per source tree (e.g. a `git worktree` of the previous commit and the working tree), probed with
one 1-row request in flight in short slices, rotating over the servers and reversing the order
every other pass, so that drift and position hit every server alike.

    python -m bench.echo_ab TREE [TREE ...] [--rounds 3] [--seconds 6] [--preload]

--preload first drives each server with 64-row loads on `echo` and `dlrm` (4 s each), as
bench/serving_core.py does before it measures echo latency. Prints p50/p99 and the p50 ratio to
the bare server per round; writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import uvloop

from bench.harness import ROOT, record, start, stop, timed_calls
from ferry.loadtest.run import percentiles, run_closed_loop
from ferry.proto import grpc_service_pb2 as pb
from ferry.proto import grpc_service_pb2_grpc as pb_grpc
from ferry.server.example_repo import write_example_repo


async def probe_all(addresses: dict[str, str], seconds: float, slices: int) -> dict[str, Any]:
    """`seconds` of 1-row echo requests per server, in `slices` slices each."""
    request = pb.ModelInferRequest(model_name="echo")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(np.ones((1, 16), np.float32).tobytes())
    names = list(addresses)
    channels = {n: grpc.aio.insecure_channel(a) for n, a in addresses.items()}
    samples: dict[str, list[float]] = {n: [] for n in names}
    try:
        stubs = {n: pb_grpc.GRPCInferenceServiceStub(c) for n, c in channels.items()}
        for stub in stubs.values():  # connect and warm up
            for _ in range(300):
                await stub.ModelInfer(request)
        for turn in range(slices):
            order = names if turn % 2 == 0 else names[::-1]
            for name in order:
                call = functools.partial(stubs[name].ModelInfer, request)
                await timed_calls(call, seconds / slices, samples[name])
    finally:
        for channel in channels.values():
            await channel.close()
    return {n: percentiles(s) for n, s in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trees", nargs="+", help="source trees to start Ferry from")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--preload", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ferry-echo-ab-"))
    repo = work / "models"
    write_example_repo(repo)
    processes: list[subprocess.Popen[bytes]] = []
    addresses: dict[str, str] = {}
    try:
        bare, addresses["bare"] = start(
            [sys.executable, "-m", "bench.bare_echo_server"], work / "bare.log"
        )
        processes.append(bare)
        for i, tree in enumerate(args.trees):
            # Trees from before the `ferry` namespace start their server as `-m server`.
            module = "ferry" if (Path(tree) / "ferry").is_dir() else "server"
            command = [sys.executable, "-m", module, "serve", "--model-repository", str(repo)]
            process, address = start(
                [*command, "--grpc-port", "0", "--metrics-port", "0"],
                work / f"ferry-{i}.log",
                cwd=Path(tree).resolve(),
            )
            processes.append(process)
            addresses[f"{i}:{tree}"] = address
        if args.preload:
            for address in addresses.values():
                for model in ("echo", "dlrm"):
                    uvloop.run(
                        run_closed_loop(
                            address, model, concurrency=64, rows=64, duration_s=4, warmup_s=0.5
                        )
                    )
        rounds = []
        for _ in range(args.rounds):
            found = uvloop.run(probe_all(addresses, args.seconds, args.slices))
            floor = found["bare"]["p50"]
            for name, p in found.items():
                p["p50_ratio"] = p["p50"] / floor
                line = f"p50 {p['p50']:.3f} ms  p99 {p['p99']:.3f} ms  x {p['p50_ratio']:.3f}"
                print(f"{name:40s} {line}")
            print("--")
            rounds.append(found)
    finally:
        for process in processes:
            stop(process)
    for name in addresses:
        ratios = [r[name]["p50_ratio"] for r in rounds]
        print(
            f"{name:40s} p50 x bare: {np.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
        )
    path = record("echo_ab", vars(args), {"rounds": rounds})
    print(f"full results: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
