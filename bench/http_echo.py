"""What Ferry's HTTP front end costs over its stack: `echo` (16 FP32, binary tensor data, one
request in flight) through Ferry against aiohttp on uvloop serving a bare echo handler
(bench/bare_http_server.py), interleaved in one run.

    python -m bench.http_echo [--rounds 3] [--calls 2000]

Each round sends `calls` requests to each server in alternating slices of 200 over one
keep-alive connection per server, and reports p50/p99 and the ratio of the p50s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import ferry, python, record, start, stop
from ferry.server.example_repo import write_example_repo

SLICE = 200


def request_body() -> tuple[bytes, dict[str, str]]:
    data = np.arange(16, dtype=np.float32).tobytes()
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16],
                                     "parameters": {"binary_data_size": len(data)}}],
                         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
                        ).encode()  # fmt: skip
    return header + data, {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def timed(connection: http.client.HTTPConnection, n: int, out: list[float]) -> None:
    body, headers = request_body()
    for _ in range(n):
        t0 = time.perf_counter()
        connection.request("POST", "/v2/models/echo/infer", body, headers)
        answer = connection.getresponse()
        payload = answer.read()
        out.append(time.perf_counter() - t0)
        if answer.status != 200 or not payload.endswith(body[-64:]):
            raise RuntimeError(f"bad answer {answer.status}: {payload[:200]!r}")


def one_round(ferry_port: int, bare_port: int, calls: int) -> dict[str, Any]:
    connections = {
        "ferry": http.client.HTTPConnection("127.0.0.1", ferry_port),
        "bare": http.client.HTTPConnection("127.0.0.1", bare_port),
    }
    latencies: dict[str, list[float]] = {name: [] for name in connections}
    for connection in connections.values():  # warm-up
        timed(connection, 100, [])
    for _ in range(calls // SLICE):
        for name, connection in connections.items():
            timed(connection, SLICE, latencies[name])
    summary = {
        name: {
            "p50_ms": float(np.percentile(v, 50) * 1e3),
            "p99_ms": float(np.percentile(v, 99) * 1e3),
        }
        for name, v in latencies.items()
    }
    summary["p50_ratio"] = summary["ferry"]["p50_ms"] / summary["bare"]["p50_ms"]
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-http-echo-"))
    write_example_repo(work / "models")
    server, _ = ferry(work / "models", work / "ferry.log")
    bare, bare_address = start([*python(), "-m", "bench.bare_http_server"], work / "bare.log")
    try:
        found = re.search(r"HTTP on http://[^:]+:(\d+)", (work / "ferry.log").read_text())
        assert found is not None
        ferry_port, bare_port = int(found.group(1)), int(bare_address.rsplit(":", 1)[1])
        rounds = [one_round(ferry_port, bare_port, args.calls) for _ in range(args.rounds)]
    finally:
        stop(server)
        stop(bare)
    for index, r in enumerate(rounds):
        print(f"round {index}: ferry p50 {r['ferry']['p50_ms']:.3f} p99 {r['ferry']['p99_ms']:.3f}"
              f" ms, bare p50 {r['bare']['p50_ms']:.3f} p99 {r['bare']['p99_ms']:.3f} ms,"
              f" p50 ratio {r['p50_ratio']:.2f}")  # fmt: skip
    ratios = [r["p50_ratio"] for r in rounds]
    summary = {"p50_ratio": {"median": statistics.median(ratios), "min": min(ratios),
                             "max": max(ratios)}}  # fmt: skip
    print(f"p50 ratio median {summary['p50_ratio']['median']:.2f} "
          f"({min(ratios):.2f}-{max(ratios):.2f})")  # fmt: skip
    path = record("http_echo", vars(args), {"rounds": rounds, "summary": summary})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
