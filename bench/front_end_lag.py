"""Where a request's time goes under load: the model's latency beside the front end's own lag,
and how the interpreter's GIL switch interval changes both.

    python -m bench.front_end_lag [--rates 300,600,900,1300] [--switch-us 5000,500]
        [--models dlrm_d0_c1024,dlrm_slo] [--budget-ms 10] [--gpu]
        [--server-cpus 0-3 --client-cpus 4-15] [--processes 4] [--out DIR]

The repository is the SLO bench's (`bench/slo_batching.py`: fixed copies of `dlrm` and one with
a latency budget). For each GIL switch interval (`ferry serve --gil-switch-us`; Python's default
is 5000 µs) a server is started, and at each rate an open loop of 64-row requests runs on each model
while a probe in this process calls ServerLive every 5 ms. ServerLive touches no model: its
latency is what any request waits in gRPC and on the event loop before Ferry's own code sees it,
which a latency controller cannot see, let alone refuse early. Recorded per load: the model's
p50/p99, goodput within the budget, refusals and how long they took, and the probe's p50/p99.

A thread that wants the GIL waits up to the switch interval for a busy holder to let go; a GPU
instance's enqueue and wait threads take it several times a batch while the event loop is busy,
so a long interval can hold a batch's hand-offs back by milliseconds each.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

from bench.harness import ferry, parse_cpus, record, stop
from bench.slo_batching import load_plan, repository
from ferry.loadtest.processes import run
from ferry.loadtest.report import result_of
from ferry.loadtest.stats import percentiles
from ferry.proto import grpc_service_pb2 as pb
from ferry.proto import grpc_service_pb2_grpc as pb_grpc

PROBE_EVERY_S = 0.005


class Probe:
    """Calls ServerLive every few milliseconds on its own channel while a load runs."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self.latencies_s: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probe:
        self._stub.ServerLive(pb.ServerLiveRequest(), timeout=10)  # connected before timing
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._channel.close()

    def _run(self) -> None:
        while not self._stop.wait(PROBE_EVERY_S):
            begun = time.perf_counter()
            self._stub.ServerLive(pb.ServerLiveRequest(), timeout=10)
            self.latencies_s.append(time.perf_counter() - begun)


def one_load(address: str, model: str, rate: float, args: argparse.Namespace) -> dict[str, Any]:
    plan = replace(load_plan(address, model, 64, "open", args.seconds, args.processes), rate=rate)
    with Probe(address) as probe:
        tally = run(plan)
    result = result_of(
        tally, model=model, mode="open", duration_s=args.seconds, target_rate=rate,
        budget_ms=args.budget_ms,
    )  # fmt: skip
    refused = percentiles([latency for _, latency, ok in tally.timeline if not ok])
    live = percentiles(probe.latencies_s)
    return {
        "model": model,
        "rate": rate,
        "goodput_per_s": result.goodput_per_s,
        "answered_per_s": result.requests_per_s,
        "p50_ms": result.latency_ms.get("p50", 0.0),
        "p99_ms": result.latency_ms.get("p99", 0.0),
        "errors": result.errors,
        "refusal_p99_ms": refused.get("p99", 0.0),
        "live_p50_ms": live.get("p50", 0.0),
        "live_p99_ms": live.get("p99", 0.0),
        "live_calls": len(probe.latencies_s),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="300,600,900,1300")
    parser.add_argument("--switch-us", default="5000,500")
    parser.add_argument("--models", default="dlrm_d0_c1024,dlrm_slo")
    parser.add_argument("--budget-ms", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--server-cpus", type=parse_cpus, default=None)
    parser.add_argument("--client-cpus", type=parse_cpus, default=None)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-lag-"))
    repo = repository(work, args.budget_ms, args.gpu)
    if args.client_cpus is not None:
        os.sched_setaffinity(0, args.client_cpus)
    rates = [float(r) for r in args.rates.split(",")]
    loads: list[dict[str, Any]] = []
    for switch_us in (int(s) for s in args.switch_us.split(",")):
        log = work / f"ferry-{switch_us}.log"
        server, address = ferry(repo, log, "--gil-switch-us", str(switch_us), cpus=args.server_cpus)
        try:
            for rate in rates:
                for model in args.models.split(","):
                    entry = {"switch_us": switch_us, **one_load(address, model, rate, args)}
                    loads.append(entry)
                    print(
                        f"switch {switch_us} µs, {model} at {rate:.0f}/s: p50 {entry['p50_ms']:.1f}"
                        f" p99 {entry['p99_ms']:.1f} ms, goodput {entry['goodput_per_s']:.0f}/s,"
                        f" refusals' p99 {entry['refusal_p99_ms']:.1f} ms; ServerLive p50"
                        f" {entry['live_p50_ms']:.2f} p99 {entry['live_p99_ms']:.2f} ms",
                        flush=True,
                    )
        finally:
            stop(server)
    settings = {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items()}
    print(f"wrote {record('front_end_lag', settings, {'loads': loads}, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
