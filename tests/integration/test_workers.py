"""`ferry serve --workers 2`: two server processes share one port; connections spread over both,
each answers correctly, and SIGTERM stops them all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np

from ferry.loadtest.processes import Plan, run
from ferry.loadtest.workload import Workload
from ferry.proto import grpc_service_pb2 as pb
from ferry.proto import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import reaped
from tests.prometheus_text import samples

ROOT = Path(__file__).resolve().parents[2]


def successes(url: str) -> float:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(
        value
        for (name, labels), value in samples(text).items()
        if name == "nv_inference_request_success" and ("model", "versioned") in labels
    )


def start_workers(model_repo: Path, log: Path) -> subprocess.Popen[bytes]:
    """`ferry serve --workers 2` writing to `log`, once both workers serve."""
    command = [sys.executable, "-m", "ferry", "serve", "--model-repository", str(model_repo)]
    command += ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", "--workers", "2"]
    command += ["--no-strict-readiness", "--drain-timeout", "5", "--gil-switch-us", "700"]
    with log.open("w") as sink:
        supervisor = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text()
        if len(re.findall(r"serving on ", text)) >= 2:
            return supervisor
        if supervisor.poll() is not None:
            break
        time.sleep(0.1)
    supervisor.kill()
    supervisor.wait()
    raise AssertionError(f"the workers did not start:\n{log.read_text()}")


def worker_pids(text: str) -> list[int]:
    found = re.search(r"\(pids ([\d, ]+)\)", text)
    assert found is not None, text
    return [int(pid) for pid in found[1].split(", ")]


def test_two_workers_share_the_port_and_stop_together(model_repo: Path, tmp_path: Path) -> None:
    log = tmp_path / "workers.log"
    with reaped(start_workers(model_repo, log)) as supervisor:
        text = log.read_text()
        addresses = set(re.findall(r"serving on (\S+)", text))
        assert len(addresses) == 1, addresses  # one shared port
        address = addresses.pop()
        metrics = re.findall(r"metrics on (\S+)", text)
        assert len(metrics) == 2 and metrics[0] != metrics[1]
        # A process setting reaches every worker: each applied it before serving.
        assert len(re.findall(r"GIL switch interval 700 µs", text)) == 2, text
        request = pb.ModelInferRequest(model_name="versioned", model_version="1")
        request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(np.zeros((1, 4), np.float32).tobytes())
        sent = 40
        # A new connection each time (a local subchannel pool: gRPC would otherwise share
        # one connection between channels), and the kernel picks a worker for each.
        options = [("grpc.use_local_subchannel_pool", 1)]
        for _ in range(sent):
            with grpc.insecure_channel(address, options=options) as channel:
                answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
            got = np.frombuffer(answer.raw_output_contents[0], np.float32)
            np.testing.assert_array_equal(got, np.ones(4, np.float32))  # x + 1
        counts = [successes(url) for url in metrics]
        assert sum(counts) == sent
        # Each worker runs on its own share of the CPUs (its threads sized from it).
        pids = worker_pids(text)
        shares = [os.sched_getaffinity(pid) for pid in pids]
        assert set().union(*shares) == os.sched_getaffinity(0)
        if len(os.sched_getaffinity(0)) >= 2:
            assert not shares[0] & shares[1], shares
        assert all(count > 0 for count in counts), counts  # both workers served
        # The load generator's channels are connections of their own too: one client
        # process with 16 channels reaches both workers (the chance that 16 connections
        # all land on one of two workers is 2 ** -15).
        plan = Plan(
            address, Workload("versioned", "1"), "closed", concurrency=16, duration_s=1.0,
            warmup_s=0.0, channels=16,
        )  # fmt: skip
        tally = run(plan)
        after = [successes(url) for url in metrics]
        assert sum(after) - sum(counts) >= len(tally.latencies_s) > 0
        assert all(a > c for a, c in zip(after, counts, strict=True)), (counts, after)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=30) == 0


def test_workers_stop_when_their_supervisor_is_killed(model_repo: Path, tmp_path: Path) -> None:
    """A supervisor killed without a word (SIGKILL, the OOM killer) leaves no worker serving
    the shared port: each gets SIGTERM from the kernel and drains."""
    log = tmp_path / "workers.log"
    supervisor = start_workers(model_repo, log)
    pids = worker_pids(log.read_text())
    supervisor.kill()
    supervisor.wait()
    deadline = time.monotonic() + 20
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in pids if _running(pid)]
        time.sleep(0.1)
    for pid in alive:  # never leave them behind, whatever the verdict
        os.kill(pid, signal.SIGKILL)
    assert not alive, log.read_text()
    assert log.read_text().count("stopped") >= 2  # each drained and stopped, not killed


def test_a_worker_that_dies_stops_the_replica(model_repo: Path, tmp_path: Path) -> None:
    """A replica with a hole would serve half its connections' worth of refusals: when a worker
    dies on its own, the supervisor stops the other and exits non-zero, for the orchestrator to
    restart the whole replica."""
    log = tmp_path / "workers.log"
    with reaped(start_workers(model_repo, log)) as supervisor:
        pids = worker_pids(log.read_text())
        os.kill(pids[0], signal.SIGKILL)
        assert supervisor.wait(timeout=30) == 1
    assert not _running(pids[1])
    assert "a worker exited on its own" in log.read_text()


def _running(pid: int) -> bool:
    """Whether `pid` still runs: an exited orphan waits as a zombie until init reaps it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_worker_options_are_checked(model_repo: Path) -> None:
    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "ferry", "serve", "--model-repository", str(model_repo)]
        return subprocess.run(
            [*command, *extra], cwd=ROOT, capture_output=True, text=True, timeout=60
        )

    for bad in ("0", "two", "gpu:0", "gpu:x"):
        answer = run("--workers", bad)
        assert (
            answer.returncode == 2
            and "--workers takes a number >= 1, 'auto', 'gpu' or 'gpu:N'" in answer.stderr
        )
    shared_socket = run("--workers", "2", "--unix-socket", "/tmp/ferry-test.sock")
    assert (
        shared_socket.returncode == 2 and "a Unix socket cannot be shared" in shared_socket.stderr
    )
    from ferry.engines.cuda.devices import discover

    if not discover().devices:  # here: no GPU, so --workers gpu must say so and stop
        for asked in ("gpu", "gpu:2"):
            answer = run("--workers", asked)
            assert answer.returncode == 2 and f"--workers {asked}, but no GPU" in answer.stderr


def test_auto_weighs_the_models_the_control_mode_loads(model_repo: Path, tmp_path: Path) -> None:
    """`--workers auto` counts the files of the models loaded at start (here, in explicit mode,
    the one named) against the memory, and says what it chose."""
    from ferry.common.cpus import usable_cpus
    from ferry.server.repository import serving_bytes
    from ferry.server.workers import auto_workers

    loaded = serving_bytes(model_repo, ["versioned"])
    assert 0 < loaded < serving_bytes(model_repo)  # the others would weigh more
    log = tmp_path / "auto.log"
    command = [sys.executable, "-m", "ferry", "serve", "--model-repository", str(model_repo)]
    command += ["--grpc-port", "0", "--http-port", "-1", "--metrics-port", "-1"]
    command += ["--workers", "auto", "--model-control-mode", "explicit"]
    command += ["--load-model", "versioned", "--drain-timeout", "5"]
    with log.open("w") as sink:
        supervisor = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    with reaped(supervisor):
        deadline = time.monotonic() + 60
        while "serving on" not in (text := log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=30) == 0, log.read_text()
    chosen = auto_workers(loaded)
    expected = f"--workers auto: {chosen} worker(s) for {usable_cpus()} usable CPU(s) and "
    assert expected + f"{loaded / 2**20:.1f} MiB of models" in text, text
