"""Turning a run into numbers people read: the result record, the server's own view of the run
(from ModelStatistics), the final table, and the optional latency-against-rate plot."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np

from ferry.loadtest.stats import LoadResult, Tally, percentiles
from ferry.proto import grpc_service_pb2 as pb
from ferry.proto import grpc_service_pb2_grpc as pb_grpc

SATURATED_CORE = 0.9  # a client process busier than this cannot promise its numbers


def result_of(
    tally: Tally,
    *,
    model: str,
    mode: str,
    duration_s: float,
    concurrency: int = 0,
    target_rate: float = 0.0,
    processes: int = 1,
    server: dict[str, float] | None = None,
    budget_ms: float = 0.0,
) -> LoadResult:
    done = len(tally.latencies_s)
    budget_s = budget_ms / 1e3
    within = sum(1 for t, latency, ok in tally.timeline if ok and latency <= budget_s)
    return LoadResult(
        model=model,
        mode=mode,
        duration_s=duration_s,
        requests=done,
        rows=tally.rows,
        errors=dict(tally.errors),
        requests_per_s=done / duration_s,
        rows_per_s=tally.rows / duration_s,
        latency_ms=percentiles(tally.latencies_s),
        concurrency=concurrency,
        target_rate=target_rate,
        rows_per_request=tally.rows / done if done else 0.0,
        client_cpu_cores=tally.cpu_s / duration_s,
        client_processes=processes,
        late_sends=tally.late_sends,
        server=server or {},
        replicas=_shares(tally),
        budget_ms=budget_ms,
        goodput_per_s=within / duration_s if budget_ms else 0.0,
        timeline=timeline(tally.timeline, duration_s, budget_s),
    )


WINDOW_S = 1.0
STEP_S = 0.25


def timeline(
    events: list[tuple[float, float, bool]], duration_s: float, budget_s: float = 0.0
) -> list[dict[str, float]]:
    """The run second by second: for each 1-second window ending every 0.25 s (by intended
    send time), requests sent, answered, the p99 of the answered and, with a budget, how many
    were answered within it."""
    if not events:
        return []
    data = np.array(events, dtype=np.float64)
    sent_at, latency, ok = data[:, 0], data[:, 1], data[:, 2].astype(bool)
    rows = []
    end = WINDOW_S
    while end <= duration_s + 1e-9:
        inside = (sent_at >= end - WINDOW_S) & (sent_at < end)
        answered = latency[inside & ok]
        row = {
            "t": round(end, 3),
            "sent": float(inside.sum()),
            "answered": float(len(answered)),
            "p99_ms": float(np.percentile(answered, 99) * 1e3) if len(answered) else 0.0,
        }
        if budget_s:
            row["within_budget"] = float((answered <= budget_s).sum())
        rows.append(row)
        end += STEP_S
    return rows


def _shares(tally: Tally) -> dict[str, float]:
    """Each target's share of the answers, when there are several targets."""
    total = sum(tally.by_target.values())
    if len(tally.by_target) < 2 or not total:
        return {}
    return {target: n / total for target, n in sorted(tally.by_target.items())}


def statistics(address: str, model: str, version: str = "") -> Any:
    """The model's ModelStatistics now (one version: the one asked for, or the first)."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model, version=version))
    return answer.model_stats[0]


def server_view(before: Any, after: Any) -> dict[str, float]:
    """What the server saw between two ModelStatistics snapshots."""
    stats_b, stats_a = before.inference_stats, after.inference_stats

    def delta(name: str) -> tuple[int, int]:
        a, b = getattr(stats_a, name), getattr(stats_b, name)
        return a.count - b.count, a.ns - b.ns

    success, _ = delta("success")
    failed, _ = delta("fail")
    queued, queue_ns = delta("queue")
    computed, infer_ns = delta("compute_infer")
    executions = after.execution_count - before.execution_count
    rows = after.inference_count - before.inference_count
    return {
        "success": success,
        "fail": failed,
        "executions": executions,
        "rows": rows,
        "mean_batch_rows": rows / executions if executions else 0.0,
        "mean_queue_ms": queue_ns / queued / 1e6 if queued else 0.0,
        "mean_compute_ms": infer_ns / computed / 1e6 if computed else 0.0,
    }


def table(result: LoadResult) -> str:
    lat = result.latency_ms
    load = (
        f"concurrency {result.concurrency}"
        if result.mode == "closed"
        else f"target {result.target_rate:.0f} requests/s (Poisson)"
    )
    lines = [
        f"model {result.model}: {result.mode} loop, {load}, {result.duration_s:.1f} s, "
        f"{result.rows_per_request:.1f} rows/request",
        f"  requests/s {result.requests_per_s:10.1f}   rows/s {result.rows_per_s:12.1f}",
        "  latency ms  " + "  ".join(f"{k} {v:.3f}" for k, v in lat.items()),
        "  errors      " + (", ".join(f"{k}: {v}" for k, v in result.errors.items()) or "none"),
        f"  client      {result.client_processes} process(es), "
        f"{result.client_cpu_cores:.2f} cores of CPU",
    ]
    if result.server:
        s = result.server
        lines.append(
            f"  server      {s['success']:.0f} ok, {s['fail']:.0f} failed, mean batch "
            f"{s['mean_batch_rows']:.1f} rows, queue {s['mean_queue_ms']:.3f} ms, compute "
            f"{s['mean_compute_ms']:.3f} ms (means per request)"
        )
    if result.replicas:
        lines.append(
            "  replicas    "
            + "  ".join(f"{t} {share:.1%}" for t, share in result.replicas.items())
        )
    if result.budget_ms:
        lines.append(
            f"  goodput     {result.goodput_per_s:.1f} requests/s answered within "
            f"{result.budget_ms:g} ms"
        )
    if result.timeline:
        lines.append("  timeline    t(s)  sent/s  answered/s  p99 ms (each second)")
        for row in result.timeline[:: int(WINDOW_S / STEP_S)]:
            lines.append(
                f"              {row['t']:4.0f} {row['sent']:7.0f} {row['answered']:11.0f} "
                f"{row['p99_ms']:7.2f}"
            )
    for warning in warnings(result):
        lines.append(f"  WARNING     {warning}")
    return "\n".join(lines)


def warnings(result: LoadResult) -> list[str]:
    out = []
    per_process = result.client_cpu_cores / max(result.client_processes, 1)
    if per_process > SATURATED_CORE:
        out.append(
            f"each client process used {per_process:.2f} cores: the client may be the "
            "bottleneck; add --processes"
        )
    sent = result.requests + sum(result.errors.values())
    if result.mode == "open" and sent and result.late_sends > 0.01 * sent:
        out.append(
            f"{result.late_sends} of {sent} requests left more than 1 ms late: the client "
            "cannot keep the rate (latencies still count from the intended times)"
        )
    return out


def plot_timeline(result: LoadResult, path: str) -> str:
    """The rolling 1-second p99 and the answered rate over the run, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install matplotlib)"
    t = [row["t"] for row in result.timeline]
    figure, latency = plt.subplots(figsize=(8, 4))
    latency.plot(t, [row["p99_ms"] for row in result.timeline], label="p99 ms (1 s window)")
    if result.budget_ms:
        latency.axhline(result.budget_ms, linestyle="--", color="grey", label="budget")
    latency.set_xlabel("seconds")
    latency.set_ylabel("p99 ms")
    rate = latency.twinx()
    rate.plot(t, [row["sent"] for row in result.timeline], color="tab:orange", label="sent/s")
    rate.set_ylabel("requests/s")
    latency.legend(loc="upper left")
    rate.legend(loc="upper right")
    figure.savefig(path, dpi=100, bbox_inches="tight")
    return f"plot: {path}"


def plot(steps: list[tuple[float, bool, LoadResult]], path: str, percentile: str) -> str:
    """Latency percentiles against rate, as a PNG (needs matplotlib; says so when missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install matplotlib)"
    ordered = sorted(steps, key=lambda s: s[0])
    rates = [rate for rate, _, _ in ordered]
    figure, axes = plt.subplots(figsize=(7, 4))
    for key in ("p50", "p99", "p99.9"):
        axes.plot(
            rates, [r.latency_ms.get(key, float("nan")) for _, _, r in ordered], "o-", label=key
        )
    axes.set_xlabel("requests/s (target)")
    axes.set_ylabel("latency ms")
    axes.set_title(f"latency against rate ({percentile} SLO search)")
    axes.legend()
    figure.savefig(path, dpi=100, bbox_inches="tight")
    return f"plot: {path}"
