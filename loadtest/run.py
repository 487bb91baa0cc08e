"""Load tests against any server that speaks Triton's gRPC protocol.

    python loadtest/run.py --model dlrm --concurrency 32 --rows 64             # closed loop
    python loadtest/run.py --model dlrm --rate 2000 --rows 64                  # open loop
    python loadtest/run.py --model dlrm --rows 64 --slo-ms 10 --max-rate 8000  # search

Closed loop keeps N requests in flight. Open loop sends at Poisson times and measures latency from
each request's intended send time. Search runs open loops at rising rates to find the highest
that keeps a latency percentile under the SLO with at most the error budget failing. Inputs come
from ModelMetadata (or an .npz file); requests are built and serialized before the clock starts.
Prints a final table (and a live progress line with --processes); --json writes the result.
It is a client only: Ferry's generated stubs, never server internals.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ferry.loadtest import processes, report
from ferry.loadtest.processes import Plan
from ferry.loadtest.profile import ProfileError, RateProfile
from ferry.loadtest.search import Slo, search
from ferry.loadtest.stats import LoadResult, percentiles
from ferry.loadtest.workload import Choice, Workload, WorkloadError

__all__ = ["LoadResult", "main", "percentiles", "run_closed_loop"]


async def run_closed_loop(
    address: str,
    model: str,
    *,
    concurrency: int,
    rows: int,
    duration_s: float,
    free_dim: int | tuple[int, int] = 16,
    id_range: int = 1000,
    channels: int = 1,
    warmup_s: float = 1.0,
    priority: int = 0,
    pool: int = 64,
) -> LoadResult:
    """A closed-loop run in this process's event loop (what the bench scripts call)."""
    spec = f"{free_dim[0]}:{free_dim[1]}" if isinstance(free_dim, tuple) else str(free_dim)
    dims = Choice.parse(spec, "free_dim")
    workload = Workload(
        model,
        rows=Choice((rows,), (1.0,)),
        free_dim=dims,
        id_range=id_range,
        priorities=Choice((priority,), (1.0,)) if priority else None,
        pool=pool,
        seed=7,
    )
    plan = Plan(address, workload, "closed", concurrency, 0.0, duration_s, warmup_s, channels)
    tally = await processes.run_here(plan)
    return report.result_of(
        tally, model=model, mode="closed", duration_s=duration_s, concurrency=concurrency
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    target = parser.add_argument_group("target")
    target.add_argument(
        "--address",
        default="127.0.0.1:8001",
        help="host:port, or several comma-separated (replicas: the load is spread evenly over "
        "them and each one's share reported)",
    )
    target.add_argument("--model", required=True)
    target.add_argument("--model-version", default="")
    load = parser.add_argument_group("load (closed loop unless --rate or --slo-ms)")
    load.add_argument("--concurrency", type=int, default=8, help="closed loop: requests in flight")
    load.add_argument("--rate", type=float, help="open loop: requests/s, Poisson arrivals")
    load.add_argument(
        "--rate-profile",
        help="open loop whose rate changes: step:300@10,900@10 or ramp:100-1000@20 "
        "(requests/s @ seconds; the run lasts the profile)",
    )
    load.add_argument(
        "--budget-ms",
        type=float,
        default=0.0,
        help="latency budget: report goodput (answered within it, per second) and count it in "
        "the timeline",
    )
    load.add_argument("--duration", type=float, default=10.0, help="seconds measured (per step)")
    load.add_argument("--warmup", type=float, default=1.0, help="seconds sent but not measured")
    load.add_argument("--processes", type=int, default=1, help="client processes")
    load.add_argument("--channels", type=int, default=1, help="gRPC channels per process")
    load.add_argument("--streaming", action="store_true", help="ModelStreamInfer, not ModelInfer")
    work = parser.add_argument_group("workload")
    work.add_argument(
        "--rows", default="1", help="rows per request: N, LOW:HIGH, V=W,V=W (weights) or @FILE"
    )
    work.add_argument("--free-dim", default="16", help="size of -1 dims (same forms as --rows)")
    work.add_argument("--id-range", type=int, default=1000, help="integer inputs in [0, N)")
    work.add_argument("--replay", type=Path, help=".npz with one array per input to send rows of")
    work.add_argument("--priority", default="0", help="priority: N, or a mix such as 1=0.1,2=0.9")
    work.add_argument("--deadline-ms", type=float, help="per-request gRPC deadline")
    work.add_argument("--pool", type=int, default=64, help="distinct requests generated")
    slo = parser.add_argument_group("search (with --slo-ms)")
    slo.add_argument("--slo-ms", type=float, help="latency bound: search for the highest rate")
    slo.add_argument("--percentile", default="p99", choices=["p50", "p90", "p99", "p99.9"])
    slo.add_argument("--error-budget", type=float, default=0.001, help="failing share allowed")
    slo.add_argument("--start-rate", type=float, default=100.0)
    slo.add_argument("--max-rate", type=float, default=100_000.0)
    slo.add_argument("--search-steps", type=int, default=5, help="bisection steps")
    slo.add_argument(
        "--plot",
        help="write a PNG: latency against rate (search), or the rolling p99 over time (open loop)",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--json", type=Path, help="write the result(s) here")
    out.add_argument("--no-server-stats", action="store_true", help="skip ModelStatistics")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.duration <= 0 or args.processes < 1 or args.channels < 1:
        parser.error("--concurrency, --processes, --channels must be >= 1 and --duration > 0")
    try:
        priority = Choice.parse(args.priority, "--priority")
        workload = Workload(
            args.model,
            args.model_version,
            rows=Choice.parse(args.rows, "--rows"),
            free_dim=Choice.parse(args.free_dim, "--free-dim"),
            id_range=args.id_range,
            priorities=None if priority.values == (0,) else priority,
            deadline_s=args.deadline_ms / 1e3 if args.deadline_ms else None,
            replay=args.replay,
            pool=args.pool,
        )
    except WorkloadError as exc:
        parser.error(str(exc))
    try:
        profile = RateProfile.parse(args.rate_profile) if args.rate_profile else None
    except ProfileError as exc:
        parser.error(str(exc))
    if profile is not None and (args.rate or args.slo_ms):
        parser.error("--rate-profile sets the rate: leave out --rate and --slo-ms")
    duration = profile.duration_s if profile is not None else args.duration
    mode = "open" if args.rate or args.slo_ms or profile else "closed"
    plan = Plan(
        args.address,
        workload,
        mode,
        concurrency=args.concurrency,
        rate=args.rate or (profile.peak if profile else 0.0),
        duration_s=duration,
        profile=profile,
        warmup_s=args.warmup,
        channels=args.channels,
        streaming=args.streaming,
        processes=args.processes,
    )

    # The server's own view (ModelStatistics) is read from a single target only.
    server_stats = not args.no_server_stats and len(plan.targets()) == 1

    def run_once(rate: float | None = None) -> LoadResult:
        step = plan if rate is None else replace(plan, rate=rate)
        before = (
            report.statistics(args.address, args.model, args.model_version)
            if server_stats
            else None
        )
        tally = processes.run(step, live=args.processes > 1 or args.duration >= 30)
        view = (
            {}
            if before is None
            else report.server_view(
                before, report.statistics(args.address, args.model, args.model_version)
            )
        )
        return report.result_of(
            tally,
            model=args.model,
            mode=step.mode,
            duration_s=duration,
            concurrency=step.concurrency if step.mode == "closed" else 0,
            target_rate=step.rate,
            processes=step.processes,
            server=view,
            budget_ms=args.budget_ms,
        )

    try:
        if args.slo_ms:
            goal = Slo(args.slo_ms, args.percentile, args.error_budget)

            def step(rate: float) -> LoadResult:
                result = run_once(rate)
                print(report.table(result), flush=True)
                verdict = "meets" if goal.met_by(result) else "misses"
                print(f"  => {verdict} {goal.percentile} <= {goal.latency_ms} ms\n", flush=True)
                return result

            found = search(
                step,
                goal,
                start_rate=args.start_rate,
                max_rate=args.max_rate,
                bisect_steps=args.search_steps,
            )
            print(
                f"highest rate meeting {goal.percentile} <= {goal.latency_ms} ms with at most "
                f"{goal.error_budget:.2%} errors: {found.best_rate:.0f} requests/s"
            )
            if args.plot:
                print(report.plot(found.steps, args.plot, goal.percentile))
            if args.json:
                document = {
                    "best_rate": found.best_rate,
                    "slo": asdict(goal),
                    "steps": [
                        {"rate": r, "ok": ok, "result": asdict(res)} for r, ok, res in found.steps
                    ],
                }
                args.json.write_text(json.dumps(document, indent=2) + "\n")
            return 0 if found.best_rate > 0 else 1
        result = run_once()
    except (WorkloadError, RuntimeError) as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    print(report.table(result))
    if args.plot and result.timeline:
        print(report.plot_timeline(result, args.plot))
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 0 if result.requests else 1


if __name__ == "__main__":
    sys.exit(main())
