"""Several client processes, so that the client is never the bottleneck.

Each process runs its own event loop and channels with an equal share of the load (concurrency
or rate), builds its own request pool, and reports what it saw plus the CPU it used. The parent
shows a live progress line from shared counters and merges the tallies.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.sharedctypes
import queue
import resource
import sys
import time
from dataclasses import dataclass, replace

import grpc

from ferry.loadtest.client import Sender, StreamSender, UnarySender, closed_loop, open_loop
from ferry.loadtest.profile import RateProfile
from ferry.loadtest.stats import Tally
from ferry.loadtest.workload import Workload, prepare


@dataclass(frozen=True)
class Plan:
    """One run's load, before it is split among processes."""

    address: str
    workload: Workload
    mode: str  # "closed" or "open"
    concurrency: int = 1
    rate: float = 0.0
    duration_s: float = 10.0
    warmup_s: float = 1.0
    channels: int = 1
    streaming: bool = False
    processes: int = 1
    profile: RateProfile | None = None  # open loop: the rate changes along it (loadtest/profile.py)

    def targets(self) -> list[str]:
        """The replicas to load: `address` holds one or several, comma-separated."""
        return [t.strip() for t in self.address.split(",") if t.strip()]

    def share(self, index: int) -> Plan:
        """Process `index`'s part: concurrency and rate split as evenly as possible."""
        n = self.processes
        concurrency = self.concurrency // n + (1 if index < self.concurrency % n else 0)
        channels = max(1, self.channels // n)
        workload = replace(self.workload, seed=self.workload.seed + 1000 * index)
        return replace(
            self,
            concurrency=concurrency,
            rate=self.rate / n,
            profile=None if self.profile is None else self.profile.scaled(1 / n),
            channels=channels,
            processes=1,
            workload=workload,
        )


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_here(
    plan: Plan, progress: multiprocessing.sharedctypes.Synchronized[int] | None = None
) -> Tally:
    """Run `plan` in this process (one share, or everything when processes == 1)."""
    # A channel of its own subchannel pool opens a connection of its own: without it, gRPC
    # shares one connection among a process's channels to the same address, and a server of
    # SO_REUSEPORT workers (which spreads connections, not requests) sees one per process.
    own = [("grpc.use_local_subchannel_pool", 1)]
    # Several targets (replicas): each gets `channels` channels, interleaved, so the loop's
    # senders, taken in turn, spread requests evenly over them.
    targets = plan.targets()
    opened = [
        (target, grpc.aio.insecure_channel(target, options=own))
        for _ in range(plan.channels)
        for target in targets
    ]
    channels = [channel for _, channel in opened]
    tally = Tally()
    try:
        pool = await prepare(channels[0], plan.workload)
        streams = [StreamSender(c, t) for t, c in opened] if plan.streaming else []
        unary = [] if streams else [UnarySender(c, plan.workload.deadline_s, t) for t, c in opened]
        senders: list[Sender] = list(streams) or list(unary)
        reporter = asyncio.create_task(_report(tally, progress)) if progress is not None else None
        cpu0 = _cpu_s()
        try:
            if plan.mode == "open":
                await open_loop(
                    senders,
                    pool,
                    plan.rate,
                    plan.warmup_s,
                    plan.duration_s,
                    tally,
                    seed=plan.workload.seed,
                    profile=plan.profile,
                )
            elif plan.concurrency > 0:
                await closed_loop(
                    senders, pool, plan.concurrency, plan.warmup_s, plan.duration_s, tally
                )
        finally:
            tally.cpu_s = _cpu_s() - cpu0
            for stream in streams:
                tally.by_target[stream.target] += stream.answered
            for sender in unary:
                tally.by_target[sender.target] += sender.answered
            if reporter is not None:
                reporter.cancel()
            for stream in streams:
                await stream.close()
    finally:
        for channel in channels:
            await channel.close()
    return tally


async def _report(tally: Tally, progress: multiprocessing.sharedctypes.Synchronized[int]) -> None:
    while True:
        progress.value = tally.sent
        await asyncio.sleep(0.25)


def _child(
    plan: Plan,
    progress: multiprocessing.sharedctypes.Synchronized[int],
    results: multiprocessing.Queue[Tally],
) -> None:
    import uvloop

    results.put(uvloop.run(run_here(plan, progress)))


def run(plan: Plan, live: bool = False) -> Tally:
    """Run `plan` over `plan.processes` processes (in this one when 1) and merge the tallies."""
    if plan.processes <= 1 and not live:
        import uvloop

        return uvloop.run(run_here(plan))
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[Tally] = context.Queue()
    counters = [context.Value("q", 0) for _ in range(plan.processes)]
    children = [
        context.Process(target=_child, args=(plan.share(i), counters[i], results), daemon=True)
        for i in range(plan.processes)
    ]
    for child in children:
        child.start()
    merged = Tally()
    received = 0
    started = time.monotonic()
    total = plan.warmup_s + plan.duration_s
    while received < len(children):
        try:
            merged.merge(results.get(timeout=1.0))
            received += 1
        except queue.Empty:  # nothing yet: show progress and check the children
            if any(c.exitcode not in (None, 0) for c in children):
                raise RuntimeError("a load-generator process failed") from None
        if live:
            elapsed = time.monotonic() - started
            sent = sum(c.value for c in counters)
            print(
                f"\r  {min(elapsed, total):5.1f}/{total:.0f} s  {sent} requests sent",
                end="",
                file=sys.stderr,
                flush=True,
            )
    if live:
        print(file=sys.stderr)
    for child in children:
        child.join(timeout=10)
    return merged
