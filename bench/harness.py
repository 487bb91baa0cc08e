"""What every benchmark script shares: starting servers, reading CPU time, recording results."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import onnxruntime as ort

from ferry.proto import grpc_service_pb2 as pb
from ferry.proto import grpc_service_pb2_grpc as pb_grpc
from ferry.server.example_repo import DLRM_LIGHT, dlrm_model

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def start(
    cmd: list[str], log: Path, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a server process and wait for its "serving on ADDRESS" line."""
    handle = log.open("wb")
    process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = re.search(r"serving on ([^,\s]+)", log.read_text())
        if match:
            return process, match.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{cmd[0]} did not start:\n{log.read_text()}")


def ferry(
    repo: Path, log: Path, *extra: str, cpus: set[int] | None = None, tree: Path = ROOT
) -> tuple[subprocess.Popen[bytes], str]:
    """Start Ferry on a free loopback port serving `repo` (on `cpus` only, when given), built
    from the source tree `tree` (its own `ferry` package comes first: it is the working
    directory)."""
    command = [*python(cpus), "-m", "ferry", "serve", "--model-repository", str(repo)]
    ports = ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]
    return start([*command, *ports, *extra], log, cwd=tree)


def python(cpus: set[int] | None = None) -> list[str]:
    """The command that starts this Python, confined to `cpus` (None: anywhere) before it runs
    anything, so that every thread it starts inherits the mask."""
    if cpus is None:
        return [sys.executable]
    pin = "import os, sys; os.sched_setaffinity(0, {%s}); os.execv(sys.argv[1], sys.argv[1:])"
    return [sys.executable, "-c", pin % ",".join(map(str, sorted(cpus))), sys.executable]


def parse_cpus(text: str) -> set[int]:
    """A CPU list as taskset writes it: "0-1", "2,3", "2-5,8"."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def perf_analyzer_options(parser: argparse.ArgumentParser) -> None:
    """The options of every bench that perf_analyzer drives: the binary and its CUDA runtime
    library, the CPUs of the server and of the client, and where the record goes."""
    parser.add_argument("--perf-analyzer", type=Path, required=True)
    parser.add_argument("--cuda-runtime-lib", type=Path, required=True)
    parser.add_argument("--server-cpus", type=parse_cpus, default=None, help='e.g. "0-3"')
    parser.add_argument("--client-cpus", type=parse_cpus, default=None, help='e.g. "4-15"')
    parser.add_argument("--out", type=Path, help="folder for the JSON record (bench/results)")


def write_light_dlrm(examples: Path, folder: Path) -> None:
    """A model folder named `folder.name`: the light DLRM (embedding width 16, batches cheap on
    a CPU too) under the example `dlrm`'s config, from the example repository `examples`."""
    name = folder.name
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").write_bytes(dlrm_model(DLRM_LIGHT, name).SerializeToString())
    config = (examples / "dlrm" / "config.pbtxt").read_text()
    (folder / "config.pbtxt").write_text(config.replace('name: "dlrm"', f'name: "{name}"'))


SAMPLE = re.compile(r"^(\w+)(?:\{([^}]*)\})? (\S+)$")


def metrics_url(log: Path) -> str:
    """The /metrics URL a started server's log announces (its first worker's)."""
    found = re.search(r"metrics on (\S+)", log.read_text())
    if found is None:
        raise RuntimeError(f"no metrics endpoint in {log}")
    return found.group(1)


def model_metrics(url: str, model: str) -> dict[str, float]:
    """Every sample of `model` on a /metrics page, by name, summed over its other labels
    (instances, versions, reasons), and the process's own (samples without labels); read as
    text, so no Prometheus client is needed."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and (match.group(2) is None or f'model="{model}"' in match.group(2)):
            name = match.group(1)
            values[name] = values.get(name, 0.0) + float(match.group(3))
    return values


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=30)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metrics_endpoints(log: Path, workers: int) -> list[str]:
    """The /metrics URLs a server's log announces, once all `workers` have (at most 60 s)."""
    text, deadline = log.read_text(), time.monotonic() + 60
    while len(re.findall(r"metrics on (\S+)", text)) < workers and time.monotonic() < deadline:
        time.sleep(0.2)
        text = log.read_text()
    return re.findall(r"metrics on (\S+)", text)


def summed_metrics(urls: list[str], model: str) -> dict[str, float]:
    """`model_metrics` added up over several workers' endpoints (counters: the server's)."""
    total: dict[str, float] = {}
    for url in urls:
        for name, value in model_metrics(url, model).items():
            total[name] = total.get(name, 0.0) + value
    return total


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants (a supervisor and its workers)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        total += rss_kib(current)
        for task in Path(f"/proc/{current}/task").iterdir():
            pending += [int(child) for child in (task / "children").read_text().split()]
    return total


def rss_kib(pid: int) -> int:
    """A process's resident memory (Linux /proc), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def record(
    name: str, settings: dict[str, Any], results: dict[str, Any], out: Path | None = None
) -> Path:
    """Write results with command, machine and date as `<name>-<date>.json` under `out`
    (default bench/results/; the GPU machine's runs write where its files come back from);
    returns the path."""
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    document = {
        "benchmark": name,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": date,
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, onnxruntime {ort.__version__}",
        "settings": settings,
        **results,
    }
    out = out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{date[:16].replace(':', '-')}.json"
    if path.exists():  # two runs in one minute: keep both
        path = out / f"{name}-{date[:19].replace(':', '-')}.json"
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


async def timed_calls(
    call: Callable[[], Awaitable[object]], seconds: float, out: list[float]
) -> None:
    """Await `call()` one after another for `seconds`, appending each call's latency (seconds):
    one slice of a latency probe that alternates between servers."""
    stop_at = time.perf_counter() + seconds
    while (t0 := time.perf_counter()) < stop_at:
        await call()
        out.append(time.perf_counter() - t0)


PROBE_EVERY_S = 0.005


class Probe:
    """Calls ServerLive every few milliseconds on its own channel while a load runs. ServerLive
    touches no model: its latency is what any request waits in gRPC and on the server's event
    loop before Ferry's own code sees it (the front end's lag)."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self.latencies_s: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probe:
        self._stub.ServerLive(pb.ServerLiveRequest(), timeout=10)  # connected before timing
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._channel.close()

    def _run(self) -> None:
        while not self._stop.wait(PROBE_EVERY_S):
            begun = time.perf_counter()
            self._stub.ServerLive(pb.ServerLiveRequest(), timeout=10)
            self.latencies_s.append(time.perf_counter() - begun)
