"""`ferry health`, what the container images' HEALTHCHECK runs: exit 0 only when the asked
service answers SERVING, and a line saying what it saw."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, RunningServer


def health(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferry", "health", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("service", ["live", ""])
def test_a_serving_server_is_healthy(server: RunningServer, service: str) -> None:
    done = health("--address", server.address, "--service", service)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SERVING" in done.stdout


def test_it_reaches_a_unix_socket(server: RunningServer) -> None:
    done = health("--address", f"unix:{server.unix_socket}")
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_unknown_service_is_unhealthy(server: RunningServer) -> None:
    done = health("--address", server.address, "--service", "no.such.Service")
    assert done.returncode == 1
    assert "NOT_FOUND" in done.stdout


def test_nothing_listening_is_unhealthy_within_the_timeout(tmp_path: Path) -> None:
    done = health("--address", f"unix:{tmp_path / 'none.sock'}", "--timeout", "1")
    assert done.returncode == 1
    assert "UNAVAILABLE" in done.stdout or "DEADLINE_EXCEEDED" in done.stdout
