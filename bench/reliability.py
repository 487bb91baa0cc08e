"""Reliability under faults, overload and hostile clients: does Ferry lose, leak or leak data?

    python -m bench.reliability [--parts sigterm,big,stream,poison,overload] [--rounds 20]
    python -m bench.reliability --parts soak --soak-minutes 30

sigterm   closed-loop load (64 senders, each on its own connection, until refused), SIGTERM at a
          random moment; `--rounds` rounds with 1 and with 2 workers. Lost: any call that ended
          other than OK or UNAVAILABLE (a refusal, retryable).
big       eight sequential 200 MiB `echo` calls with 60 s deadlines (a memory budget of 1 GiB
          admits them): RSS after each, against the footprint of the first (RSS after it less
          RSS before).
stream    a stream client that writes 1 MiB requests for `--stream-seconds` and never reads:
          the server's RSS over time.
poison    150 good and 50 poisoned `lookup` calls at once (an id out of range fails its batch):
          good calls failed, messages naming another call's id.
overload  `dlrm` capacity at 256 rows per request (closed loop), then an open loop (Poisson)
          at 3x that for `--overload-seconds`, default flags: RSS, latency of refusals and of
          answers.
soak      mixed traffic at ~70% of capacity (unary, streams, client cancels, short deadlines,
          bad requests, overload bursts) for `--soak-minutes`: RSS, open descriptors, event-loop
          tasks and lost calls every 10 s.

Servers run from this tree on loopback; everything is written to bench/results/reliability-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.harness import ferry, record, stop
from ferry.proto import grpc_service_pb2 as pb
from ferry.proto import grpc_service_pb2_grpc as pb_grpc
from ferry.server.example_repo import write_example_repo
from tests.models import _save, lookup

EXPECTED = {"OK", "UNAVAILABLE"}
LOCAL = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def scrape(metrics_url: str, name: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else float("nan")


def repository(root: Path) -> Path:
    write_example_repo(root)
    _save(lookup(), root / "lookup" / "1" / "model.onnx")
    (root / "lookup" / "config.pbtxt").write_text(
        'name: "lookup"\nmax_batch_size: 64\n'
        "dynamic_batching { max_queue_delay_microseconds: 20000 }\n"
    )
    return root


def dlrm_request(rows: int, seed: int) -> pb.ModelInferRequest:
    rng = np.random.default_rng(seed)
    request = pb.ModelInferRequest(model_name="dlrm")
    request.inputs.add(name="dense", datatype="FP32", shape=[rows, 13])
    request.inputs.add(name="sparse", datatype="INT64", shape=[rows, 26])
    request.raw_input_contents.append(rng.random((rows, 13), dtype=np.float32).tobytes())
    request.raw_input_contents.append(rng.integers(0, 10**6, (rows, 26)).tobytes())
    return request


def echo_request(nbytes: int) -> pb.ModelInferRequest:
    count = nbytes // 4
    request = pb.ModelInferRequest(model_name="echo")
    request.inputs.add(name="x", datatype="FP32", shape=[1, count])
    request.raw_input_contents.append(np.ones(count, np.float32).tobytes())
    return request


def lookup_request(ident: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="lookup", id=str(ident))
    request.inputs.add(name="ids", datatype="INT64", shape=[1, 1])
    request.raw_input_contents.append(np.array([[ident]], np.int64).tobytes())
    return request


# ---- sigterm ------------------------------------------------------------------------------------


async def _load_until_refused(address: str, senders: int, rows: int) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    requests = [dlrm_request(rows, seed) for seed in range(8)]

    async def sender(index: int) -> None:
        async with grpc.aio.insecure_channel(address, options=LOCAL) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            n = index
            while True:
                try:
                    await stub.ModelInfer(requests[n % len(requests)], timeout=60)
                    outcomes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    outcomes[exc.code().name] += 1
                    return
                n += 1

    await asyncio.gather(*(sender(i) for i in range(senders)))
    return outcomes


async def _signal_under_load(process: subprocess.Popen[bytes], address: str) -> Counter[str]:
    load = asyncio.create_task(_load_until_refused(address, 64, 16))
    await asyncio.sleep(1.0 + random.random())
    process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(load, timeout=120)


def part_sigterm(repo: Path, work: Path, rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for workers in (1, 2):
        per_round = []
        for index in range(rounds):
            process, address = ferry(
                repo, work / f"sigterm-{workers}-{index}.log", "--workers", str(workers)
            )
            if workers > 1:  # every worker listens before the load starts
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    text = (work / f"sigterm-{workers}-{index}.log").read_text()
                    if len(re.findall("serving on", text)) >= workers:
                        break
                    time.sleep(0.1)

            outcomes = asyncio.run(_signal_under_load(process, address))
            code = process.wait(timeout=60)
            lost = sum(n for status, n in outcomes.items() if status not in EXPECTED)
            per_round.append({"outcomes": dict(outcomes), "lost": lost, "exit": code})
            print(f"sigterm workers={workers} round {index + 1}: {dict(outcomes)} exit {code}")
        results[f"workers_{workers}"] = {
            "rounds": per_round,
            "accepted": sum(r["outcomes"].get("OK", 0) for r in per_round),
            "lost": sum(r["lost"] for r in per_round),
        }
    return results


# ---- big requests -------------------------------------------------------------------------------


def part_big(repo: Path, work: Path) -> dict[str, Any]:
    # A 200 MiB request costs twice that while held: a budget that admits it, and messages
    # bigger than the 256 MiB default.
    budget = ["--memory-budget", str(1 << 30), "--max-message-bytes", str(512 << 20)]
    process, address = ferry(repo, work / "big.log", *budget)
    try:
        options = [
            ("grpc.max_send_message_length", 512 << 20),
            ("grpc.max_receive_message_length", 512 << 20),
        ]
        before = rss_bytes(process.pid)
        after: list[int] = []
        with grpc.insecure_channel(address, options=options) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            request = echo_request(200 << 20)
            for _ in range(8):
                stub.ModelInfer(request, timeout=60)
                time.sleep(0.5)
                after.append(rss_bytes(process.pid))
        footprint = after[0] - before
        result = {
            "rss_before": before,
            "rss_after_each": after,
            "footprint": footprint,
            "last_over_footprint": (after[-1] - before) / footprint,
        }
        print(f"big: RSS before {before >> 20} MiB, after each {[a >> 20 for a in after]} MiB; "
              f"last/footprint {result['last_over_footprint']:.2f}")  # fmt: skip
        return result
    finally:
        stop(process)


# ---- a stream that never reads ------------------------------------------------------------------


def part_stream(repo: Path, work: Path, seconds: float) -> dict[str, Any]:
    process, address = ferry(repo, work / "stream.log")
    samples: list[tuple[float, int]] = []

    async def never_read() -> int:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            call = stub.ModelStreamInfer()
            request = echo_request(1 << 20)
            written = 0
            started = time.monotonic()

            async def write() -> None:
                nonlocal written
                while True:
                    await call.write(request)
                    written += 1

            writer = asyncio.create_task(write())
            while (elapsed := time.monotonic() - started) < seconds:
                samples.append((round(elapsed, 1), rss_bytes(process.pid)))
                await asyncio.sleep(1.0)
            writer.cancel()
            call.cancel()
            return written

    try:
        written = asyncio.run(never_read())
        peak = max(r for _, r in samples)
        print(f"stream: {written} MiB written by a client that never reads; server RSS peak "
              f"{peak >> 20} MiB")  # fmt: skip
        return {"written_requests": written, "rss_samples": samples, "rss_peak": peak}
    finally:
        stop(process)


# ---- poisoned requests --------------------------------------------------------------------------


def part_poison(repo: Path, work: Path) -> dict[str, Any]:
    process, address = ferry(repo, work / "poison.log")

    async def run() -> tuple[int, int, int]:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            calls = [("good", i % 100) for i in range(150)] + [("bad", 5000 + i) for i in range(50)]
            random.shuffle(calls)

            async def one(kind: str, ident: int) -> tuple[str, int, str]:
                try:
                    await stub.ModelInfer(lookup_request(ident), timeout=30)
                    return kind, ident, ""
                except grpc.aio.AioRpcError as exc:
                    return kind, ident, f"{exc.code().name}: {exc.details()}"

            answers = await asyncio.gather(*(one(k, i) for k, i in calls))
        good_failed = sum(1 for kind, _, error in answers if kind == "good" and error)
        foreign = sum(
            1
            for _, ident, error in answers
            if any(int(n) != ident for n in re.findall(r"\b5\d{3}\b", error))
        )
        bad_failed = sum(1 for kind, _, error in answers if kind == "bad" and error)
        return good_failed, foreign, bad_failed

    try:
        good_failed, foreign, bad_failed = asyncio.run(run())
        print(f"poison: good failed {good_failed} of 150, bad failed {bad_failed} of 50, "
              f"messages naming another call's id {foreign}")  # fmt: skip
        return {"good_failed": good_failed, "bad_failed": bad_failed, "foreign_data": foreign}
    finally:
        stop(process)


# ---- overload -----------------------------------------------------------------------------------


async def _closed_loop(address: str, rows: int, concurrency: int, seconds: float) -> float:
    """Requests per second a closed loop gets."""
    requests = [dlrm_request(rows, seed).SerializeToString() for seed in range(8)]
    done = 0
    stop_at = time.monotonic() + seconds

    async def sender(index: int) -> None:
        nonlocal done
        async with grpc.aio.insecure_channel(address, options=LOCAL) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            while time.monotonic() < stop_at:
                await call(requests[(index + done) % 8], timeout=60)
                done += 1

    started = time.monotonic()
    await asyncio.gather(*(sender(i) for i in range(concurrency)))
    return done / (time.monotonic() - started)


async def _open_loop(
    address: str,
    rows: int,
    rate: float,
    seconds: float,
    channels: int,
    on_second: Callable[[], None] | None = None,
) -> list[tuple[str, float]]:
    """Poisson arrivals at `rate` for `seconds`: (status, latency s) of every call."""
    requests = [dlrm_request(rows, seed).SerializeToString() for seed in range(8)]
    outcomes: list[tuple[str, float]] = []
    pool = [grpc.aio.insecure_channel(address, options=LOCAL) for _ in range(channels)]
    calls = [c.unary_unary("/inference.GRPCInferenceService/ModelInfer") for c in pool]
    tasks: set[asyncio.Task[None]] = set()

    async def one(n: int) -> None:
        started = time.perf_counter()
        try:
            await calls[n % channels](requests[n % 8], timeout=60)
            outcomes.append(("OK", time.perf_counter() - started))
        except grpc.aio.AioRpcError as exc:
            outcomes.append((exc.code().name, time.perf_counter() - started))

    begin = time.perf_counter()
    due = begin
    n = 0
    next_second = begin + 1
    while due < begin + seconds:
        due += random.expovariate(rate)
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(n))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
        if on_second is not None and time.perf_counter() >= next_second:
            next_second += 1
            on_second()
    await asyncio.gather(*tasks)
    for channel in pool:
        await channel.close()
    return outcomes


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def part_overload(repo: Path, work: Path, seconds: float) -> dict[str, Any]:
    process, address = ferry(repo, work / "overload.log")
    try:
        capacity = asyncio.run(_closed_loop(address, 256, 32, 8.0))
        rss: list[int] = []
        outcomes = asyncio.run(
            _open_loop(
                address, 256, 3 * capacity, seconds, 16, lambda: rss.append(rss_bytes(process.pid))
            )
        )
        rss.append(rss_bytes(process.pid))
        refused = [t for s, t in outcomes if s == "UNAVAILABLE"]
        answered = [t for s, t in outcomes if s == "OK"]
        others = Counter(s for s, _ in outcomes if s not in EXPECTED)
        result = {
            "capacity_requests_per_s": capacity,
            "offered_requests_per_s": 3 * capacity,
            "sent": len(outcomes),
            "answered": len(answered),
            "refused": len(refused),
            "other": dict(others),
            "refusal_p50_ms": _p(refused, 50) * 1e3,
            "refusal_p99_ms": _p(refused, 99) * 1e3,
            "answered_p50_ms": _p(answered, 50) * 1e3,
            "answered_p99_ms": _p(answered, 99) * 1e3,
            "rss_samples": rss,
            "rss_peak": max(rss),
        }
        print(f"overload: capacity {capacity:.0f} req/s (256 rows), offered 3x; answered "
              f"{len(answered)}, refused {len(refused)}, other {dict(others)}; refusal p99 "
              f"{result['refusal_p99_ms']:.1f} ms; answered p99 "
              f"{result['answered_p99_ms']:.0f} ms; "
              f"RSS peak {max(rss) >> 20} MiB")  # fmt: skip
        return result
    finally:
        stop(process)


# ---- soak ---------------------------------------------------------------------------------------


async def _soak(
    address: str, metrics_url: str, pid: int, minutes: float, rate: float
) -> dict[str, Any]:
    """Mixed traffic; every call's end is checked against what its kind allows."""
    allowed = {
        "unary": {"OK", "UNAVAILABLE"},
        "deadline": {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"},
        "cancel": {"OK", "UNAVAILABLE", "CANCELLED"},
        "bad": {"INVALID_ARGUMENT"},
        "stream": {"OK", "UNAVAILABLE"},
        "burst": {"OK", "UNAVAILABLE"},
    }
    tally: Counter[tuple[str, str]] = Counter()
    lost: list[tuple[str, str]] = []
    pool = [grpc.aio.insecure_channel(address, options=LOCAL) for _ in range(8)]
    stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in pool]
    rng = random.Random(7)
    small = [dlrm_request(16, seed) for seed in range(8)]
    bad = pb.ModelInferRequest(model_name="dlrm")
    bad.inputs.add(name="dense", datatype="FP32", shape=[4, 12])  # wrong shape
    bad.raw_input_contents.append(np.zeros((4, 12), np.float32).tobytes())
    tasks: set[asyncio.Task[None]] = set()

    def note(kind: str, status: str) -> None:
        tally[(kind, status)] += 1
        if status not in allowed[kind]:
            lost.append((kind, status))

    raw_small = [r.SerializeToString() for r in small]
    raw_bad = bad.SerializeToString()
    infers = [c.unary_unary("/inference.GRPCInferenceService/ModelInfer") for c in pool]

    async def unary(kind: str, n: int) -> None:
        infer = infers[n % len(infers)]
        try:
            if kind == "deadline":
                await infer(raw_small[n % 8], timeout=0.002)
            elif kind == "bad":
                await infer(raw_bad, timeout=30)
            elif kind == "cancel":
                call = infer(raw_small[n % 8], timeout=30)
                await asyncio.sleep(rng.random() * 0.005)
                call.cancel()
                await call
            else:
                await infer(raw_small[n % 8], timeout=30)
            note(kind, "OK")
        except asyncio.CancelledError:
            note(kind, "CANCELLED")
        except grpc.aio.AioRpcError as exc:
            note(kind, exc.code().name)

    async def stream(n: int) -> None:
        stub = stubs[n % len(stubs)]

        async def requests():  # type: ignore[no-untyped-def]
            for i in range(20):
                yield small[(n + i) % 8]

        try:
            async for answer in stub.ModelStreamInfer(requests(), timeout=60):
                note("stream", "UNAVAILABLE" if answer.error_message else "OK")
        except grpc.aio.AioRpcError as exc:
            note("stream", exc.code().name)

    timeline: list[dict[str, Any]] = []
    begin = time.monotonic()
    end = begin + minutes * 60
    next_sample = begin
    n = 0
    due = time.monotonic()
    kinds = ["unary"] * 80 + ["deadline"] * 6 + ["cancel"] * 6 + ["bad"] * 4 + ["stream"] * 1
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_sample:
            next_sample += 10
            timeline.append(
                {
                    "t_s": round(now - begin, 1),
                    "rss": rss_bytes(pid),
                    "fds": open_fds(pid),
                    "tasks": scrape(metrics_url, "ferry_event_loop_tasks"),
                    "in_flight": scrape(metrics_url, "ferry_requests_in_flight"),
                    "lost": len(lost),
                    "calls": sum(tally.values()),
                }
            )
            print(f"soak {timeline[-1]}", flush=True)
        burst = (int(now - begin) % 120) < 5  # five seconds of 3x load every two minutes
        due += rng.expovariate(rate * (3 if burst else 1))
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        kind = "burst" if burst else rng.choice(kinds)
        coro = stream(n) if kind == "stream" else unary("unary" if kind == "burst" else kind, n)
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    await asyncio.gather(*tasks)
    for channel in pool:
        await channel.close()
    # Drift: RSS when the server is quiet (nothing queued: no burst under way), after a
    # two-minute warm-up, from the first such sample to the last, and at most.
    quiet = [s["rss"] for s in timeline if s["t_s"] >= 120 and s["in_flight"] < 64]
    return {
        "rate_per_s": rate,
        "minutes": minutes,
        "tally": {f"{k}:{s}": v for (k, s), v in sorted(tally.items())},
        "lost": len(lost),
        "lost_kinds": dict(Counter(f"{k}:{s}" for k, s in lost)),
        "timeline": timeline,
        "rss_quiet_after_warmup": quiet,
        "rss_drift_after_warmup": (quiet[-1] - quiet[0]) / quiet[0] if quiet else None,
        "rss_spread_after_warmup": (max(quiet) - min(quiet)) / min(quiet) if quiet else None,
    }


async def _calibrated_capacity(address: str, metrics_url: str) -> float:
    """What this client and the server sustain together with 16-row requests: the closed loop's
    rate, lowered until an open loop at that rate keeps the server's queue short (the client
    shares the server's cores, and an open loop costs it more than a closed one)."""
    capacity = await _closed_loop(address, 16, 32, 8.0)
    held: list[float] = []

    def sample() -> None:
        held.append(scrape(metrics_url, "ferry_requests_in_flight"))

    for _ in range(6):
        held.clear()
        await _open_loop(address, 16, capacity, 6.0, 8, sample)
        if statistics.median(held) <= 64:
            return capacity
        capacity *= 0.8
    return capacity


def part_soak(repo: Path, work: Path, minutes: float) -> dict[str, Any]:
    log = work / "soak.log"
    process, address = ferry(repo, log)
    metrics_url = re.search(r"metrics on (\S+)", log.read_text())
    assert metrics_url is not None
    try:
        capacity = asyncio.run(_calibrated_capacity(address, metrics_url.group(1)))
        result = asyncio.run(
            _soak(address, metrics_url.group(1), process.pid, minutes, 0.7 * capacity)
        )
        result["capacity_requests_per_s"] = capacity
        print(f"soak: {sum(result['tally'].values())} calls, lost {result['lost']}, RSS drift "
              f"after warm-up {result['rss_drift_after_warmup']}")  # fmt: skip
        return result
    finally:
        stop(process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="sigterm,big,stream,poison,overload")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--stream-seconds", type=float, default=60.0)
    parser.add_argument("--overload-seconds", type=float, default=20.0)
    parser.add_argument("--soak-minutes", type=float, default=30.0)
    args = parser.parse_args()
    parts = args.parts.split(",")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repo = repository(work / "repo")
        runs: dict[str, Callable[[], dict[str, Any]]] = {
            "sigterm": lambda: part_sigterm(repo, work, args.rounds),
            "big": lambda: part_big(repo, work),
            "stream": lambda: part_stream(repo, work, args.stream_seconds),
            "poison": lambda: part_poison(repo, work),
            "overload": lambda: part_overload(repo, work, args.overload_seconds),
            "soak": lambda: part_soak(repo, work, args.soak_minutes),
        }
        for part in parts:
            results[part] = runs[part]()
    path = record("reliability", vars(args), results)
    print(f"full results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
