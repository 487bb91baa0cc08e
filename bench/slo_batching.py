"""SLO-driven batching against fixed settings: `dlrm` with a p99 budget (ferry.slo.p99_ms) and
copies of it with fixed (queue delay, max batch) settings, one server, Poisson arrivals.

    python -m bench.slo_batching [--budget-ms 10] [--rows 64] [--seconds 8]
        [--capacity poisson|closed] [--server-cpus 0-3 --client-cpus 4-15] [--processes 1]
        [--gpu] [--light] [--gil-switch-us US] [--workers N] [--out DIR]

With `--server-cpus` the server runs on those CPUs only and the client (this process and its
load processes) on `--client-cpus`: on a machine with cores to spare, the client's own work
then takes nothing from the server's.

Capacity (`--capacity poisson`, the default): the highest Poisson rate at which the default
`dlrm` answers with its p99 within the budget (loadtest's search: doubling, then bisecting), the
best of two searches: the load the budget names, for the arrivals the loads below send.
`--capacity closed` reads it from closed loops at 1, 2, 4, ... in flight instead (the best
throughput with the p99 within the budget); a closed loop sends no bursts, so that reading is
higher than what Poisson arrivals can be served at within the budget. The closed loops run in
both modes and are recorded, with the most served at any latency. Where no Poisson rate holds
the budget (a machine too slow or too noisy for it), the loads are shares of the closed-loop
reading, and the record says so.

Then, at 30%, 60%, 90% and 130% of capacity, an open loop on every model: goodput (answered
within the budget, per second), p99 of the answered, refusals and how long a refused
request took to hear so, the server's resident memory after each load, the front end's lag
meanwhile (ServerLive's latency, every 5 ms: what any request waits in gRPC and on the event
loop before Ferry's code sees it), and from the server's /metrics the batches it formed (rows
and engine time per batch) and, four times a second, the latency controller's decisions (delay,
cap, admission share, predicted and observed p99); the SLO model against the best fixed setting
at each load. With `--workers N` the counters add up over the workers, the controller's
decisions are the first worker's and the memory is the supervisor's and its workers'. Then a
step 30% -> 90% -> 30% on the SLO model and on the fixed setting best at 90%: the rolling
1-second p99 (loadtest's timeline), the seconds it stays over the budget after each step, and
the share of requests over the budget.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.harness import (
    Probe,
    ferry,
    metrics_endpoints,
    model_metrics,
    parse_cpus,
    record,
    stop,
    summed_metrics,
    tree_rss_kib,
)
from ferry.loadtest.processes import Plan, run
from ferry.loadtest.profile import RateProfile
from ferry.loadtest.report import result_of
from ferry.loadtest.search import Slo, search
from ferry.loadtest.stats import LoadResult, percentiles
from ferry.loadtest.workload import Choice, Workload
from ferry.server.example_repo import DLRM_LIGHT, dlrm_model, write_example_repo

FIXED = [(delay, cap) for delay in (0, 2000, 8000) for cap in (256, 1024)]
LOADS = (0.3, 0.6, 0.9, 1.3)


def fixed_name(delay_us: int, cap: int) -> str:
    return f"dlrm_d{delay_us}_c{cap}"


def repository(work: Path, budget_ms: float, gpu: bool, light: bool = False) -> Path:
    """Copies of `dlrm` with fixed settings and one with the budget. `light`: every copy serves
    the light DLRM (embedding width 16) instead, whose batches cost little next to the front
    end's work per request: the regime of a GPU, whose batches cost little too, on a CPU."""
    examples = work / "examples"
    write_example_repo(examples)
    repo = work / "repo"
    source = examples / "dlrm"
    if light:
        blob = dlrm_model(DLRM_LIGHT, "dlrm").SerializeToString()
        for onnx in source.rglob("model.onnx"):
            onnx.write_bytes(blob)
    text = (source / "config.pbtxt").read_text()
    if gpu:  # every copy, the default `dlrm` included, on GPU 0 (ONNX Runtime's CUDA provider)
        text = text.replace("kind: KIND_CPU", "kind: KIND_GPU")
        (source / "config.pbtxt").write_text(text)
    for delay, cap in FIXED:
        folder = repo / fixed_name(delay, cap)
        shutil.copytree(source, folder)
        config = text.replace('name: "dlrm"', f'name: "{folder.name}"')
        config = config.replace("max_batch_size: 1024", f"max_batch_size: {cap}")
        config = config.replace(
            "max_queue_delay_microseconds: 200", f"max_queue_delay_microseconds: {delay}"
        )
        (folder / "config.pbtxt").write_text(config)
    slo = repo / "dlrm_slo"
    shutil.copytree(source, slo)
    config = text.replace('name: "dlrm"', 'name: "dlrm_slo"')
    config = config.replace("max_queue_delay_microseconds: 200", "")
    config += f'parameters {{ key: "ferry.slo.p99_ms" value: {{ string_value: "{budget_ms}" }} }}\n'
    (slo / "config.pbtxt").write_text(config)
    shutil.copytree(source, repo / "dlrm")
    return repo


def load_plan(
    address: str, model: str, rows: int, mode: str, seconds: float, processes: int
) -> Plan:
    """Every load of this bench: `rows` per request to `model`, one second of warm-up first."""
    workload = Workload(model, rows=Choice((rows,), (1.0,)))
    return Plan(address, workload, mode, duration_s=seconds, warmup_s=1.0, processes=processes)


def open_loop(
    address: str,
    model: str,
    rows: int,
    rate: float,
    seconds: float,
    budget_ms: float,
    *,
    metrics: list[str],
    profile: RateProfile | None = None,
    processes: int = 1,
) -> dict[str, Any]:
    """Poisson arrivals at `rate` (or `profile`'s rates) on `model`: goodput, p99, refusals, and
    from the server's /metrics (`metrics`: every worker's) the batches it formed and its
    controller's decisions (the first worker's), and the front end's lag meanwhile (ServerLive's
    latency)."""
    plan = load_plan(address, model, rows, "open", seconds, processes)
    before = summed_metrics(metrics, model)
    with Sampler(metrics[0], model) as sampler, Probe(address) as probe:
        tally = run(replace(plan, rate=rate, profile=profile))
    server = batches(before, summed_metrics(metrics, model))
    lag = percentiles(probe.latencies_s)
    refused = percentiles([latency for _, latency, ok in tally.timeline if not ok])
    duration = profile.duration_s if profile else seconds
    result = result_of(
        tally, model=model, mode="open", duration_s=duration, target_rate=rate, budget_ms=budget_ms
    )
    return {
        "model": model,
        "rate": rate,
        "goodput_per_s": result.goodput_per_s,
        "answered_per_s": result.requests_per_s,
        "p50_ms": result.latency_ms.get("p50", 0.0),
        "p99_ms": result.latency_ms.get("p99", 0.0),
        "errors": result.errors,
        # how long a refused request took to hear so: refusing early is refusing fast
        "refusal_p99_ms": refused.get("p99", 0.0),
        "refusal_max_ms": refused.get("max", 0.0),
        "timeline": result.timeline if profile else [],
        "server": server,  # batches formed, over the whole run (its warm-up included)
        "controller": sampler.samples,  # the loop's lag only, for a model without a budget
        "server_live_p50_ms": lag.get("p50", 0.0),
        "server_live_p99_ms": lag.get("p99", 0.0),
    }


COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_compute_infer_duration_us",
    "ferry_slo_refused_total",
)
SAMPLED_GAUGES = (
    "ferry_slo_queue_delay_seconds",
    "ferry_slo_batch_rows_cap",
    "ferry_slo_predicted_p99_seconds",
    "ferry_slo_observed_p99_seconds",
    "ferry_slo_safety",
    "ferry_event_loop_lag_seconds",  # the process's: the worst lateness of the last second
)


class Sampler:
    """Reads `model`'s latency-controller gauges every quarter second while a load runs: the
    controller's decisions over time (delay, cap, admission share, predicted and observed p99),
    where the model has a budget; and the server's event-loop lag (the worst of each second)."""

    def __init__(self, metrics: str, model: str) -> None:
        self._metrics, self._model = metrics, model
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            values = model_metrics(self._metrics, self._model)
            gauges = {
                k.removeprefix("ferry_slo_"): v for k, v in values.items() if k in SAMPLED_GAUGES
            }
            self.samples.append({"t": round(time.monotonic() - self._start, 2), **gauges})


def batches(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What the server did between two scrapes: batches, rows per batch, engine time per batch."""
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in COUNTERS}
    executions = max(delta["nv_inference_exec_count"], 1.0)
    answered = max(delta["nv_inference_request_success"], 1.0)
    return {
        "batches": delta["nv_inference_exec_count"],
        "rows_per_batch": delta["nv_inference_count"] / executions,
        # As Triton's, the compute counters add each batch's time once per request in it.
        "infer_ms_per_batch": delta["nv_inference_compute_infer_duration_us"] / answered / 1e3,
        "refused_by_controller": delta["ferry_slo_refused_total"],
    }


def rss_mb(pid: int) -> float:
    return tree_rss_kib(pid) / 1024  # with workers: the supervisor and every worker


CAPACITY_STEP_S = 4.0
"""Seconds measured at each step of reading capacity (after one second of warm-up)."""


def capacity_within(
    address: str, rows: int, budget_ms: float, processes: int
) -> tuple[float, float, list[dict[str, float]]]:
    """(requests/s within the budget, requests/s at any latency, every closed loop run): closed
    loops on the default `dlrm` at 1, 2, 4, ... in flight, two passes."""
    loops: list[dict[str, float]] = []
    for _ in range(2):
        in_flight = 1
        while in_flight <= 64:
            plan = load_plan(
                address, "dlrm", rows, "closed", CAPACITY_STEP_S, min(processes, in_flight)
            )
            tally = run(replace(plan, concurrency=in_flight))
            latencies = tally.latencies_s
            p99_ms = percentiles(latencies).get("p99", float("inf"))
            loops.append(
                {
                    "in_flight": in_flight,
                    "per_s": len(latencies) / CAPACITY_STEP_S,
                    "p99_ms": p99_ms,
                }
            )
            if p99_ms > budget_ms:
                break
            in_flight *= 2
    within = max((r["per_s"] for r in loops if r["p99_ms"] <= budget_ms), default=0.0)
    return within, max(r["per_s"] for r in loops), loops


def poisson_capacity(
    address: str, rows: int, budget_ms: float, processes: int, start: float, most: float
) -> tuple[float, list[dict[str, float]]]:
    """(the highest Poisson rate the default `dlrm` answers with its p99 within the budget, every
    step of the searches): two searches from `start` up to `most` requests/s, the better one."""

    def run_at(rate: float) -> LoadResult:
        plan = load_plan(address, "dlrm", rows, "open", CAPACITY_STEP_S, processes)
        plan = replace(plan, rate=rate)
        return result_of(run(plan), model="dlrm", mode="open", duration_s=CAPACITY_STEP_S,
                         target_rate=rate)  # fmt: skip

    best, steps = 0.0, []
    for _ in range(2):
        found = search(run_at, Slo(budget_ms), start_rate=start, max_rate=most, bisect_steps=4)
        best = max(best, found.best_rate)
        steps += [
            {"rate": rate, "within": ok, "p99_ms": result.latency_ms.get("p99", 0.0)}
            for rate, ok, result in found.steps
        ]
    return best, steps


def over_budget_after_steps(
    timeline: list[dict[str, float]], steps: list[float], budget_ms: float
) -> list[float]:
    """Seconds from each step until the rolling p99 is back within the budget for good."""
    out = []
    for index, at in enumerate(steps):
        end = steps[index + 1] if index + 1 < len(steps) else float("inf")
        rows = [r for r in timeline if at < r["t"] <= end]
        last_over = max((r["t"] for r in rows if r["p99_ms"] > budget_ms), default=at)
        out.append(max(0.0, last_over - at))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-ms", type=float, default=10.0)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument(
        "--capacity", choices=("poisson", "closed"), default="poisson",
        help="what 100%% load is: the highest Poisson rate within the budget, or closed loops'",
    )  # fmt: skip
    parser.add_argument("--server-cpus", type=parse_cpus, default=None, help='e.g. "0-3"')
    parser.add_argument("--client-cpus", type=parse_cpus, default=None, help='e.g. "4-15"')
    parser.add_argument("--processes", type=int, default=1, help="load generator processes")
    parser.add_argument("--gpu", action="store_true", help="every model on GPU 0 (KIND_GPU)")
    parser.add_argument("--light", action="store_true", help="the light DLRM in every copy")
    parser.add_argument("--gil-switch-us", type=int, help="the server's (ferry serve's flag)")
    parser.add_argument("--workers", type=int, default=1, help="the server's worker processes")
    parser.add_argument("--out", type=Path, help="folder for the JSON record (bench/results)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-slo-"))
    repo = repository(work, args.budget_ms, args.gpu, args.light)
    extra = ["--workers", str(args.workers)]
    if args.gil_switch_us is not None:
        extra += ["--gil-switch-us", str(args.gil_switch_us)]
    server, address = ferry(repo, work / "ferry.log", *extra, cpus=args.server_cpus)
    metrics = metrics_endpoints(work / "ferry.log", args.workers)
    if args.client_cpus is not None:
        os.sched_setaffinity(0, args.client_cpus)  # the load processes inherit it
    results: dict[str, Any] = {"loads": []}
    try:
        closed, at_any_latency, loops = capacity_within(
            address, args.rows, args.budget_ms, args.processes
        )
        results["closed_loop_capacity_requests_per_s"] = closed
        results["capacity_at_any_latency_requests_per_s"] = at_any_latency
        results["capacity_loops"] = loops
        print(
            f"closed loops: {closed:.0f} requests/s with p99 within {args.budget_ms:g} ms "
            f"({at_any_latency:.0f}/s at any latency)"
        )
        capacity = closed
        if args.capacity == "poisson":
            start = max(1.0, at_any_latency / 32)
            capacity, steps = poisson_capacity(
                address, args.rows, args.budget_ms, args.processes, start, at_any_latency
            )
            results["poisson_capacity_requests_per_s"] = capacity
            results["poisson_search"] = steps
            print(f"Poisson arrivals: {capacity:.0f} requests/s with p99 within the budget")
            if capacity == 0.0:  # not even the lightest load held the budget on this machine
                capacity = closed
                results["capacity_from"] = "closed loops: no Poisson rate held the budget"
                print(f"no Poisson rate held the budget: loads are shares of {closed:.0f}/s")
        results["capacity_requests_per_s"] = capacity
        common: dict[str, Any] = {
            "seconds": args.seconds, "budget_ms": args.budget_ms, "processes": args.processes,
            "metrics": metrics,
        }  # fmt: skip
        results["rss_mb_before_loads"] = rss_mb(server.pid)
        for load in LOADS:
            rate = load * capacity
            fixed = [
                open_loop(address, fixed_name(d, c), args.rows, rate, **common) for d, c in FIXED
            ]
            rss_before = rss_mb(server.pid)  # the budget model's own run: its memory at this load
            slo = open_loop(address, "dlrm_slo", args.rows, rate, **common)
            slo["rss_mb_before"], slo["rss_mb_after"] = rss_before, rss_mb(server.pid)
            best = max(fixed, key=lambda r: r["goodput_per_s"])
            entry = {
                "load": load,
                "rate": rate,
                "slo": slo,
                "fixed": fixed,
                "best_fixed": best,
                "goodput_ratio": slo["goodput_per_s"] / max(best["goodput_per_s"], 1e-9),
            }
            entry["rss_mb_after"] = rss_mb(server.pid)
            results["loads"].append(entry)
            print(
                f"{load:.0%} ({rate:.0f}/s): SLO goodput {slo['goodput_per_s']:.0f}/s, p99 "
                f"{slo['p99_ms']:.1f} ms, refused {sum(slo['errors'].values())} (p99 "
                f"{slo['refusal_p99_ms']:.1f} ms to hear so); best fixed "
                f"{best['model']} {best['goodput_per_s']:.0f}/s, p99 {best['p99_ms']:.1f} ms "
                f"(ratio {entry['goodput_ratio']:.2f}); server RSS {entry['rss_mb_after']:.0f} MB; "
                f"rows per batch {slo['server']['rows_per_batch']:.0f} (best fixed "
                f"{best['server']['rows_per_batch']:.0f}), engine "
                f"{slo['server']['infer_ms_per_batch']:.2f} ms a batch "
                f"({best['server']['infer_ms_per_batch']:.2f}); ServerLive p99 "
                f"{slo['server_live_p99_ms']:.1f} ms ({best['server_live_p99_ms']:.1f})"
            )
        low, high = 0.3 * capacity, 0.9 * capacity
        profile = RateProfile.parse(f"step:{low}@6,{high}@6,{low}@6")
        best_at_90 = next(e for e in results["loads"] if e["load"] == 0.9)["best_fixed"]["model"]
        results["step"] = {}
        for model in ("dlrm_slo", best_at_90):
            step = open_loop(
                address, model, args.rows, high, 18.0, args.budget_ms, metrics=metrics,
                profile=profile, processes=args.processes,
            )  # fmt: skip
            recovery = over_budget_after_steps(step["timeline"], [6.0, 12.0], args.budget_ms)
            sent = sum(r["sent"] for r in step["timeline"][::4])
            answered = sum(r["answered"] for r in step["timeline"][::4])
            within = sum(r["within_budget"] for r in step["timeline"][::4])
            step["seconds_over_budget_after_steps"] = recovery
            step["share_over_budget"] = 1 - within / max(sent, 1)  # refused ones included
            step["share_answered_over_budget"] = (answered - within) / max(sent, 1)
            step["share_refused"] = (sent - answered) / max(sent, 1)
            results["step"][model] = step
            print(
                f"step 30%->90%->30% on {model}: back within budget {recovery} s after the "
                f"steps, {step['share_over_budget']:.1%} of requests not answered within it "
                f"({step['share_answered_over_budget']:.1%} answered late, "
                f"{step['share_refused']:.1%} refused)"
            )
    finally:
        stop(server)
    path = record("slo_batching", vars(args), results, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
