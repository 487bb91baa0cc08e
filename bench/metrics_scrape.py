"""What a /metrics scrape costs the event loop: Ferry's writer against prometheus-client's.

    python -m bench.metrics_scrape [--models 9,50] [--rounds 7] [--scrapes 20] [--live]
        [--server-cpus 0 --client-cpus 1] [--out DIR]

A scrape is pure Python on the metrics thread, and while it writes, the event loop waits for
the GIL: every request in flight waits with it. Ferry writes its families itself
(telemetry/exposition.py, telemetry/histogram.py). In process, for each model count, the same
populated `Metrics` is written both ways in alternating rounds: prometheus-client's
`generate_latest` over every family (as /metrics wrote them before) and `Metrics.exposition()`
(what /metrics answers); both texts must parse to the same samples. Recorded: lines,
milliseconds a scrape each way (median of each round), and their ratio per round.

`--live` also starts a server on the SLO bench's repository (nine copies of `dlrm`, each sent a
few requests so that each has its series) and alternates seconds without scrapes and seconds of
back-to-back scrapes while a probe calls ServerLive every 5 ms: its latency is the loop's wait.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bench.harness import Probe, ferry, metrics_endpoints, parse_cpus, record, stop
from ferry.common.errors import Overloaded
from ferry.engines.base import Timings
from ferry.scheduler.request import InferenceResult
from ferry.scheduler.slo import Decision
from ferry.telemetry.metrics import Metrics


def populated(models: int) -> Metrics:
    """A `Metrics` as a server with `models` busy models leaves it: every family has values."""
    metrics = Metrics()
    for i in range(models):
        name = f"model_{i}"
        for j in range(200):
            result = InferenceResult({}, 50_000 * (j % 40), Timings(1, 2, 3), 64, j, 0, 10**6 * j)
            metrics.request_done(name, "1", 100_000 * (j % 90), result, None)
        metrics.request_done(name, "1", 10**6, None, Overloaded("full", "budget"))
        metrics.batch_rows.child(name, "1").observe(64 * (i % 9 + 1))
        metrics._model((name, "1")).slo[0] = Decision(0.001, 256, 0.004, 0.005, 0.8, True, 0.001)
    return metrics


def samples(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    """Every sample; names without `_total` (prometheus-client's parser adds it to a counter's
    samples when the TYPE line names the counter as written, as Ferry's does, and not else)."""
    return {
        (s.name.removesuffix("_total"), tuple(sorted(s.labels.items())), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def in_process(models: int, rounds: int, scrapes: int) -> dict[str, Any]:
    metrics = populated(models)
    library = CollectorRegistry()
    library.register(metrics.collector())
    before, after = generate_latest(library).decode(), metrics.exposition().decode()
    if samples(before) != samples(after):
        raise RuntimeError("the two writers disagree on the samples")
    per_round = []
    for _ in range(rounds):
        times: dict[str, list[float]] = {"library": [], "ferry": []}
        for _ in range(scrapes):
            for way, write in (("library", lambda: generate_latest(library)),
                               ("ferry", metrics.exposition)):  # fmt: skip
                t0 = time.perf_counter()
                write()
                times[way].append(time.perf_counter() - t0)
        library_ms = statistics.median(times["library"]) * 1e3
        ferry_ms = statistics.median(times["ferry"]) * 1e3
        per_round.append({"library_ms": library_ms, "ferry_ms": ferry_ms,
                          "ratio": ferry_ms / library_ms})  # fmt: skip
    ratios = [r["ratio"] for r in per_round]
    return {
        "models": models,
        "lines": len(after.splitlines()),
        "rounds": per_round,
        "library_ms_median": statistics.median(r["library_ms"] for r in per_round),
        "ferry_ms_median": statistics.median(r["ferry_ms"] for r in per_round),
        "ratio_median": statistics.median(ratios),
        "ratio_spread": [min(ratios), max(ratios)],
    }


def live(rounds: int, server_cpus: set[int] | None, client_cpus: set[int] | None) -> dict[str, Any]:
    from bench.slo_batching import FIXED, fixed_name, open_loop, repository

    work = Path(tempfile.mkdtemp(prefix="ferry-scrape-"))
    repo = repository(work, 10.0, False, light=True)
    server, address = ferry(repo, work / "ferry.log", cpus=server_cpus)
    if client_cpus is not None:
        os.sched_setaffinity(0, client_cpus)
    metrics = metrics_endpoints(work / "ferry.log", 1)
    try:
        for model in [fixed_name(d, c) for d, c in FIXED] + ["dlrm_slo", "dlrm"]:
            open_loop(address, model, 64, 50.0, 1.0, 10.0, metrics=metrics)
        body = urllib.request.urlopen(metrics[0], timeout=10).read()
        phases: list[dict[str, Any]] = []
        for _ in range(rounds):
            for scraping in (False, True):
                took: list[float] = []
                done = threading.Event()
                thread = (
                    threading.Thread(target=_scrape, args=(metrics[0], done, took))
                    if scraping
                    else None
                )
                with Probe(address) as probe:
                    if thread is not None:
                        thread.start()
                    time.sleep(3.0)
                    done.set()
                    if thread is not None:
                        thread.join()
                lags = sorted(probe.latencies_s)
                phases.append({
                    "scraping": scraping,
                    "scrapes": len(took),
                    "scrape_ms_median": statistics.median(took) * 1e3 if took else 0.0,
                    "server_live_p50_ms": lags[len(lags) // 2] * 1e3,
                    "server_live_p99_ms": lags[int(0.99 * (len(lags) - 1))] * 1e3,
                    "server_live_max_ms": lags[-1] * 1e3,
                })  # fmt: skip
        return {"lines": len(body.splitlines()), "phases": phases}
    finally:
        stop(server)


def _scrape(url: str, done: threading.Event, took: list[float]) -> None:
    """Scrape `url` back to back until `done`, noting each scrape's time."""
    while not done.is_set():
        t0 = time.perf_counter()
        urllib.request.urlopen(url, timeout=10).read()
        took.append(time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="9,50")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--live", action="store_true", help="also a real server, ServerLive's lag")
    parser.add_argument("--server-cpus", type=parse_cpus, default=None)
    parser.add_argument("--client-cpus", type=parse_cpus, default=None)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {"in_process": []}
    for models in (int(n) for n in args.models.split(",")):
        row = in_process(models, args.rounds, args.scrapes)
        results["in_process"].append(row)
        print(
            f"{models} models, {row['lines']} lines: prometheus-client "
            f"{row['library_ms_median']:.2f} ms a scrape, Ferry's {row['ferry_ms_median']:.2f} "
            f"ms; ratio {row['ratio_median']:.3f} ({row['ratio_spread'][0]:.3f}-"
            f"{row['ratio_spread'][1]:.3f} over {args.rounds} rounds)"
        )
    if args.live:
        results["live"] = live(3, args.server_cpus, args.client_cpus)
        for phase in results["live"]["phases"]:
            print(
                f"{'scraping' if phase['scraping'] else 'idle    '}: {phase['scrapes']} scrapes "
                f"({phase['scrape_ms_median']:.2f} ms each), ServerLive p50 "
                f"{phase['server_live_p50_ms']:.2f} p99 {phase['server_live_p99_ms']:.2f} max "
                f"{phase['server_live_max_ms']:.2f} ms"
            )
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    print(f"wrote {record('metrics_scrape', settings, results, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
