"""Where a request's time goes under load: the model's latency beside the front end's own lag,
and how the interpreter's GIL switch interval changes both.

    python -m bench.front_end_lag [--rates 300,600,900,1300] [--switch-us 5000,500]
        [--models dlrm_d0_c1024,dlrm_slo] [--budget-ms 10] [--gpu]
        [--server-cpus 0-3 --client-cpus 4-15] [--processes 4] [--out DIR]

The repository is the SLO bench's (`bench/slo_batching.py`: fixed copies of `dlrm` and one with
a latency budget). For each GIL switch interval (`ferry serve --gil-switch-us`; Python's
default is 5000 µs) a server is started, and at each rate an open loop of 64-row requests runs
on each model (the SLO bench's `open_loop`) while a probe calls ServerLive every 5 ms.
ServerLive touches no model: its latency is what any request waits in gRPC and on the event
loop before Ferry's own code sees it, which a latency controller can neither see nor refuse
early. Recorded per load: the model's p50/p99, goodput within the budget, refusals and how long
they took, the probe's p50/p99, and the batches the server formed.

A thread that wants the GIL waits up to the switch interval for a busy holder to let go; a GPU
instance's enqueue and wait threads take it several times a batch while the event loop is busy,
so a long interval can hold a batch's hand-offs back by milliseconds each.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.harness import ferry, metrics_endpoints, parse_cpus, record, stop
from bench.slo_batching import open_loop, repository


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
        metrics = metrics_endpoints(log, 1)
        try:
            for rate in rates:
                for model in args.models.split(","):
                    entry = open_loop(
                        address, model, 64, rate, args.seconds, args.budget_ms,
                        metrics=metrics, processes=args.processes,
                    )  # fmt: skip
                    loads.append({"switch_us": switch_us, **entry})
                    print(
                        f"switch {switch_us} µs, {model} at {rate:.0f}/s: p50 {entry['p50_ms']:.1f}"
                        f" p99 {entry['p99_ms']:.1f} ms, goodput {entry['goodput_per_s']:.0f}/s,"
                        f" refusals' p99 {entry['refusal_p99_ms']:.1f} ms; ServerLive p50"
                        f" {entry['server_live_p50_ms']:.2f} p99"
                        f" {entry['server_live_p99_ms']:.2f} ms",
                        flush=True,
                    )
        finally:
            stop(server)
    settings = {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items()}
    print(f"wrote {record('front_end_lag', settings, {'loads': loads}, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
