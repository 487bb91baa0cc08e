"""loadtest/run.py against the real server: its counts equal the server's statistics, the open
loop holds its rate, errors are counted by status, and several processes and streaming work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ferry.loadtest import run as loadtest
from ferry.loadtest.report import statistics
from tests.conftest import RunningServer, start_server, stop_server


def run_tool(server: RunningServer, tmp_path: Path, *args: str) -> dict:  # type: ignore[type-arg]
    out = tmp_path / "result.json"
    code = loadtest.main(["--address", server.address, *args, "--json", str(out)])
    document = json.loads(out.read_text())
    document["exit_code"] = code
    return document  # type: ignore[no-any-return]


def test_closed_loop_counts_equal_the_servers(server: RunningServer, tmp_path: Path) -> None:
    before = statistics(server.address, "echo").inference_stats.success.count
    result = run_tool(
        server,
        tmp_path,
        "--model",
        "echo",
        "--concurrency",
        "4",
        "--rows",
        "1:8",
        "--duration",
        "1.5",
        "--warmup",
        "0",
    )
    after = statistics(server.address, "echo").inference_stats.success.count
    assert result["exit_code"] == 0 and result["errors"] == {}
    assert result["requests"] > 100
    assert after - before == result["requests"] == result["server"]["success"]
    assert 1 <= result["rows_per_request"] <= 8
    assert set(result["latency_ms"]) == {"p50", "p90", "p99", "p99.9", "max"}


def test_open_loop_keeps_its_rate(server: RunningServer, tmp_path: Path) -> None:
    result = run_tool(
        server,
        tmp_path,
        "--model",
        "dlrm",
        "--rate",
        "200",
        "--rows",
        "16",
        "--duration",
        "2",
        "--warmup",
        "0",
    )
    assert result["mode"] == "open" and result["errors"] == {}
    assert result["requests_per_s"] == pytest.approx(200, rel=0.15)
    assert result["server"]["success"] == result["requests"]


def test_errors_are_counted_by_status(server: RunningServer, tmp_path: Path) -> None:
    # `timeouts` rejects every request that waits 100 ms for a batch that never fills.
    result = run_tool(
        server,
        tmp_path,
        "--model",
        "timeouts",
        "--concurrency",
        "3",
        "--rows",
        "1",
        "--duration",
        "0.6",
        "--warmup",
        "0",
    )
    assert result["exit_code"] == 1  # nothing succeeded
    assert result["requests"] == 0
    assert result["errors"]["UNAVAILABLE"] >= 3
    assert result["server"]["fail"] == result["errors"]["UNAVAILABLE"]


def test_processes_and_streaming(server: RunningServer, tmp_path: Path) -> None:
    before = statistics(server.address, "echo").inference_stats.success.count
    result = run_tool(
        server,
        tmp_path,
        "--model",
        "echo",
        "--concurrency",
        "8",
        "--processes",
        "2",
        "--streaming",
        "--rows",
        "4",
        "--duration",
        "1.5",
        "--warmup",
        "0",
    )
    after = statistics(server.address, "echo").inference_stats.success.count
    assert result["client_processes"] == 2 and result["errors"] == {}
    assert after - before == result["requests"] > 100
    assert result["client_cpu_cores"] > 0


def test_search_mode_finds_a_rate(server: RunningServer, tmp_path: Path) -> None:
    result = run_tool(
        server,
        tmp_path,
        "--model",
        "echo",
        "--slo-ms",
        "100",
        "--start-rate",
        "50",
        "--max-rate",
        "200",
        "--duration",
        "0.5",
        "--warmup",
        "0.1",
        "--search-steps",
        "1",
    )
    assert result["exit_code"] == 0
    assert result["best_rate"] == 200
    assert [step["rate"] for step in result["steps"]] == [50, 100, 200]


def test_replay_priorities_and_deadlines(server: RunningServer, tmp_path: Path) -> None:
    rows = tmp_path / "rows.npz"
    np.savez(rows, x=np.arange(40, dtype=np.float32).reshape(10, 4))
    result = run_tool(
        server,
        tmp_path,
        "--model",
        "ranked",
        "--replay",
        str(rows),
        "--rows",
        "4",
        "--priority",
        "1=0.5,2=0.5",
        "--concurrency",
        "2",
        "--duration",
        "0.5",
        "--warmup",
        "0",
    )
    assert result["exit_code"] == 0 and result["errors"] == {} and result["requests"] > 10
    # `timeouts` holds a lone request for 100 ms: a 20 ms deadline expires first.
    late = run_tool(
        server,
        tmp_path,
        "--model",
        "timeouts",
        "--deadline-ms",
        "20",
        "--concurrency",
        "2",
        "--duration",
        "0.3",
        "--warmup",
        "0",
    )
    assert set(late["errors"]) == {"DEADLINE_EXCEEDED"}
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 4), np.float64))
    code = loadtest.main(
        [
            "--address",
            server.address,
            "--model",
            "ranked",
            "--replay",
            str(bad),
            "--duration",
            "0.2",
        ]
    )
    assert code == 2  # refused before sending: float64 rows for an FP32 input


def test_several_replicas_share_the_load_evenly(model_repo: Path, tmp_path: Path) -> None:
    """Three replicas on loopback: the load spreads over them by request, each answers within
    10% of a third, by the client's count and by each replica's own statistics."""
    for i in range(3):
        (tmp_path / f"r{i}").mkdir()
    replicas = [start_server(model_repo, tmp_path / f"r{i}") for i in range(3)]
    try:
        before = [statistics(r.address, "echo").inference_stats.success.count for r in replicas]
        out = tmp_path / "replicas.json"
        addresses = ",".join(r.address for r in replicas)
        args = ["--address", addresses, "--model", "echo", "--concurrency", "12"]
        code = loadtest.main([*args, "--duration", "2", "--warmup", "0", "--json", str(out)])
        after = [statistics(r.address, "echo").inference_stats.success.count for r in replicas]
    finally:
        for replica in replicas:
            stop_server(replica)
    assert code == 0
    shares = json.loads(out.read_text())["replicas"]
    assert set(shares) == {r.address for r in replicas}
    for share in shares.values():
        assert abs(share - 1 / 3) <= 0.1 / 3, shares
    served = [a - b for a, b in zip(after, before, strict=True)]
    for count in served:
        assert abs(count / sum(served) - 1 / 3) <= 0.1 / 3, served


def test_a_step_profile_shows_in_the_timeline_with_goodput(
    server: RunningServer, tmp_path: Path
) -> None:
    result = run_tool(
        server,
        tmp_path,
        "--model",
        "echo",
        "--rate-profile",
        "step:50@1,300@1,50@1",
        "--budget-ms",
        "1000",
        "--warmup",
        "0",
    )
    assert result["mode"] == "open" and result["duration_s"] == 3.0 and result["errors"] == {}
    by_second = {row["t"]: row for row in result["timeline"]}
    assert by_second[1.0]["sent"] == pytest.approx(50, rel=0.4)
    assert by_second[2.0]["sent"] == pytest.approx(300, rel=0.2)
    assert by_second[3.0]["sent"] == pytest.approx(50, rel=0.4)
    assert all(row["within_budget"] == row["answered"] for row in result["timeline"])
    assert result["goodput_per_s"] == pytest.approx(result["requests_per_s"])
