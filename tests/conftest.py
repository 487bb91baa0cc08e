"""Shared fixtures: the test model repository and a real Ferry server process on loopback."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc

from tests.models import build_test_repo

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_repo(tmp_path_factory.mktemp("repo"))


@dataclass
class RunningServer:
    process: subprocess.Popen[str]
    address: str
    unix_socket: str
    log_path: Path
    log_file: IO[str]
    metrics_url: str = ""
    http_url: str = ""  # http://127.0.0.1:PORT (the first worker's line; they share the port)

    def log(self) -> str:
        return self.log_path.read_text()


def start_server(repo: Path, workdir: Path, *extra: str, workers: int = 1) -> RunningServer:
    """Start `python -m ferry serve` on a free loopback port and wait until it listens (every
    worker, with `workers` > 1; then there is no Unix socket, which workers cannot share)."""
    log_path = workdir / "server.log"
    socket_path = str(workdir / "ferry.sock")
    listen = ["--unix-socket", socket_path] if workers == 1 else ["--workers", str(workers)]
    log_file = log_path.open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ferry",
            "serve",
            "--model-repository",
            str(repo),
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            *listen,
            "--no-strict-readiness",
            "--drain-timeout",
            "5",
            "--metrics-port",
            "0",
            "--access-log",
            str(workdir / "access.log"),
            *extra,
        ],
        cwd=ROOT,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = re.search(r"serving on ([^,\s]+)", log_path.read_text())
        if match and len(re.findall(r"serving on ", log_path.read_text())) >= workers:
            address = match.group(1)
            with grpc.insecure_channel(address) as channel:
                grpc.channel_ready_future(channel).result(timeout=10)
            metrics = re.search(r"metrics on (\S+)", log_path.read_text())
            http = re.search(r"HTTP on (\S+)", log_path.read_text())
            return RunningServer(
                process,
                address,
                socket_path,
                log_path,
                log_file,
                metrics.group(1) if metrics else "",
                http.group(1) if http else "",
            )
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    log_file.close()
    raise RuntimeError(f"server did not start:\n{log_path.read_text()}")


def stop_server(server: RunningServer) -> int:
    server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        raise
    finally:
        server.log_file.close()


@contextlib.contextmanager
def reaped(process: subprocess.Popen[Any]) -> Iterator[subprocess.Popen[Any]]:
    """`process`, killed and waited for on the way out if it still runs: a failed assertion
    must not leave a server (or a supervisor and its workers) behind."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(model_repo, tmp_path_factory.mktemp("server"))
    yield running
    stop_server(running)


class LateAnswer:
    """The answer to one tritonclient `async_infer` call (pass it as the callback), waited for."""

    def __init__(self) -> None:
        self.answers: list[tuple[Any, Any]] = []
        self.done = threading.Event()

    def __call__(self, result: Any, error: Any) -> None:
        self.answers.append((result, error))
        self.done.set()

    def wait(self, timeout_s: float) -> tuple[Any, Any]:
        """(result, error), once it came."""
        assert self.done.wait(timeout_s)
        return self.answers[0]


def history_inputs() -> list[tc.InferInput]:
    """One row for `history_padded`, whose batches wait 300 ms for company: a request that
    stays accepted and queued long enough to act on the server meanwhile."""
    inputs = [tc.InferInput("history", [1, 5], "INT64"), tc.InferInput("user", [1, 16], "FP32")]
    inputs[0].set_data_from_numpy(np.arange(1, 6, dtype=np.int64)[None])
    inputs[1].set_data_from_numpy(np.zeros((1, 16), np.float32))
    return inputs
