"""What Ferry's own work costs a request, against the floor and against Triton's Python backend:
one interleaved run, NVIDIA's perf_analyzer (C++) as the client.

    python -m bench.front_end_cost --perf-analyzer PATH --cuda-runtime-lib DIR
        [--tritonserver DIR] [--rounds 3] [--part all|servers|paths|workers|streams]

Servers, each on loopback, started once and measured in turn, round after round:
- `bare`: a grpc.aio server on uvloop that copies the input to the output
  (bench/bare_echo_server.py), the floor for Python gRPC; echo only.
- `ferry`: `ferry serve` on the same models (ONNX Runtime on the CPU, one instance, dynamic
  batching with the example configs' queue delays); `ferry_spinning`: the same with ONNX
  Runtime's intra-op threads spinning between parallel sections (`allow_spinning: "true"`,
  ONNX Runtime's own default; Ferry's is off); `ferry_w2`: `--workers 2` (each worker on its
  share of the CPUs; requests counted from every worker's metrics).
- `triton`: Triton's `tritonserver` with its Python backend (`--tritonserver`: the `tritonserver`
  folder of the `nvidia-pytriton` wheel, which ships the server, the backend and a stub per
  Python version), each model a `model.py` that runs ONNX Runtime (this Python's) on the same
  model.onnx with the same threads, one instance, the same dynamic-batching config.

Workloads: `echo` (16 FP32) at 1 in flight; `dlrm_light` (the DLRM shape at embedding width 16,
about 0.74M parameters) and `dlrm` (the reference size) at 1 and at 64 rows per request, 64 in
flight. Reported per server and workload: rows/s, p50 and p99 (perf_analyzer's), and server CPU
per request (user + system CPU of the server's processes over the measurement, /proc, divided by
the requests the server answered in it, from its statistics).
Paths (`--part paths`): Ferry alone, reached by unary gRPC, a gRPC stream (ModelStreamInfer),
HTTP/REST (binary tensors) and unary gRPC with system shared memory, on `echo` at 1 in flight
(latency) and `dlrm_light` at 64 rows, 64 in flight (CPU).
Streams (`--part streams`): Ferry and Triton each by unary gRPC and by ModelStreamInfer, on
`echo` at 1 in flight and `dlrm_light` at 1 and 64 rows, 64 in flight; a server that dies under
a load is recorded (its log's tail) and started afresh.
Workers (`--part workers`): `ferry serve --workers N` for each N of `--workers-list` on
`--server-cpus`, perf_analyzer on `--client-cpus`.
perf_analyzer: the binary in the `tritonclient==2.50.0` wheel (`tritonclient-2.50.0.data/data/
bin/perf_analyzer`); it needs `libcudart.so.12` on LD_LIBRARY_PATH (`--cuda-runtime-lib`, e.g.
the `nvidia-cuda-runtime-cu12` wheel's `nvidia/cuda_runtime/lib`) and `libb64`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    ROOT,
    ferry,
    metrics_endpoints,
    model_metrics,
    perf_analyzer_options,
    python,
    record,
    start,
    stop,
    write_light_dlrm,
)
from ferry.server.example_repo import write_example_repo

MODEL_PY = '''
import json, os, sys
sys.path[:0] = PATHS  # the bench's interpreter's packages: the stub starts with its own path
import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        parts = [[pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs]
                 for r in requests]
        rows = [p[0].shape[0] for p in parts]
        feeds = {n: np.concatenate([p[i] for p in parts]) for i, n in enumerate(self.inputs)}
        outputs = self.session.run(self.outputs, feeds)
        answers, at = [], 0
        for n in rows:
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(out[at:at + n]))
                       for name, out in zip(self.outputs, outputs)]
            answers.append(pb_utils.InferenceResponse(output_tensors=tensors))
            at += n
        return answers
'''


@dataclass(frozen=True)
class Workload:
    model: str
    rows: int
    in_flight: int
    shape: str = ""  # perf_analyzer --shape for a variable input

    @property
    def name(self) -> str:
        return f"{self.model} {self.rows} row{'s' if self.rows > 1 else ''} x{self.in_flight}"


WORKLOADS = (
    Workload("echo", 1, 1, "x:16"),
    Workload("dlrm_light", 1, 64),
    Workload("dlrm_light", 64, 64),
    Workload("dlrm", 1, 64),
    Workload("dlrm", 64, 64),
)
MODELS = ("echo", "dlrm_light", "dlrm")

PATHS = ("grpc", "grpc_stream", "http", "grpc_shm")
"""The ways a client can reach Ferry, each measured on Ferry alone against unary gRPC: a
bidirectional stream (ModelStreamInfer), HTTP/REST with binary tensors, and unary gRPC with the
tensors in system shared memory."""
PATH_WORKLOADS = (Workload("echo", 1, 1, "x:16"), Workload("dlrm_light", 64, 64))


SPINNING = 'parameters { key: "allow_spinning" value: { string_value: "true" } }\n'


def repositories(work: Path) -> tuple[Path, Path]:
    """Ferry's repository (the example configs), the same with ONNX Runtime's spinning on
    (`ferry_spinning`) and Triton's (the same configs, the Python backend, model.py beside the
    same model.onnx)."""
    examples = work / "examples"
    write_example_repo(examples)
    ferry_repo, triton_repo = work / "ferry", work / "triton"
    for name in ("echo", "dlrm"):
        shutil.copytree(examples / name, ferry_repo / name)
    write_light_dlrm(examples, ferry_repo / "dlrm_light")
    for name in MODELS:
        source, target = ferry_repo / name, work / "ferry_spinning" / name
        (target / "1").mkdir(parents=True)
        os.link(source / "1" / "model.onnx", target / "1" / "model.onnx")
        (target / "config.pbtxt").write_text((source / "config.pbtxt").read_text() + SPINNING)
    threads = os.cpu_count() or 1  # what Ferry gives its one instance: every usable core
    for name in MODELS:
        source = ferry_repo / name
        target = triton_repo / name
        (target / "1").mkdir(parents=True)
        os.link(source / "1" / "model.onnx", target / "1" / "model.onnx")
        paths = repr([p for p in sys.path if p and "site-packages" in p])
        text = MODEL_PY.replace("THREADS", str(threads)).replace("PATHS", paths)
        (target / "1" / "model.py").write_text(text)
        text = (source / "config.pbtxt").read_text()
        text = text.replace('platform: "onnxruntime_onnx"', 'backend: "python"')
        (target / "config.pbtxt").write_text(text)
    return ferry_repo, triton_repo


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants (Triton's Python stubs)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, family = 0.0, {pid}
    changed = True
    while changed:
        changed = False
        for child, parent in parents.items():
            if parent in family and child not in family:
                family.add(child)
                changed = True
    for member in family:
        total += times.get(member, 0.0)
    return total


def answered(address: str, model: str, metrics: Sequence[str] = ()) -> int:
    """Requests the server has answered for `model`: its statistics, or with several workers
    (whose statistics one connection cannot see whole) the sum of every worker's metrics."""
    if metrics:
        return sum(answered_each(metrics, model))
    import tritonclient.grpc as tc  # only here: the workers part runs where it is not installed

    client = tc.InferenceServerClient(address)
    stats = client.get_inference_statistics(model, as_json=True)
    return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))


def answered_each(metrics: Sequence[str], model: str) -> list[int]:
    """Requests each worker has answered for `model`, from its metrics endpoint."""
    return [
        int(model_metrics(url, model).get("nv_inference_request_success", 0)) for url in metrics
    ]


class ServerDied(RuntimeError):
    """The server under measurement exited (crashed) while perf_analyzer drove it."""


class Unstable(RuntimeError):
    """perf_analyzer's measurement windows never agreed within its trials."""


def perf_analyzer(
    binary: Path, libs: Path, address: str, workload: Workload, out: Path, seconds: float,
    path: str = "grpc", cpus: set[int] | None = None,
    server: subprocess.Popen[bytes] | None = None,
) -> dict[str, float]:  # fmt: skip
    """One perf_analyzer run; `server`: given, a server that exits meanwhile ends it
    (ServerDied). Where a noisy machine keeps the windows from agreeing, once more with windows
    twice as long (the caller's CPU and request counts span both tries)."""
    try:
        return _perf_analyzer(binary, libs, address, workload, out, seconds, path, cpus, server)
    except Unstable:
        return _perf_analyzer(
            binary, libs, address, workload, out, 2 * seconds, path, cpus, server
        )


def _perf_analyzer(
    binary: Path, libs: Path, address: str, workload: Workload, out: Path, seconds: float,
    path: str, cpus: set[int] | None, server: subprocess.Popen[bytes] | None,
) -> dict[str, float]:  # fmt: skip
    protocol = "http" if path == "http" else "grpc"
    command = [
        str(binary), "-i", protocol, "-u", address, "-m", workload.model,
        "-b", str(workload.rows), "--concurrency-range", f"{workload.in_flight}",
        "--measurement-interval", str(int(seconds * 1000)), "--stability-percentage", "25",
        "--max-trials", "6", "-f", str(out),
    ]  # fmt: skip
    if workload.shape:
        command += ["--shape", workload.shape]
    if path == "grpc_stream":
        command += ["--streaming"]
    if path == "grpc_shm":
        command += ["--shared-memory", "system", "--output-shared-memory-size", str(1 << 20)]
    env = dict(os.environ, LD_LIBRARY_PATH=str(libs))
    pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
    printed = out.with_suffix(".log")  # a file, not a pipe: nothing reads it while it runs
    with printed.open("wb") as sink:
        client = subprocess.Popen(
            command, env=env, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=pin
        )
    # perf_analyzer waits for ever on requests a dead server will never answer.
    deadline = time.monotonic() + 300
    while client.poll() is None:
        if server is not None and server.poll() is not None:
            client.kill()
            raise ServerDied(f"the server exited ({server.returncode}) under perf_analyzer")
        if time.monotonic() > deadline:
            client.kill()
            raise RuntimeError("perf_analyzer ran past 300 s")
        time.sleep(0.2)
    if client.returncode != 0:
        text = printed.read_text()
        failure = Unstable if "Failed to obtain stable measurement" in text else RuntimeError
        raise failure(f"perf_analyzer failed:\n{text}")
    with out.open() as handle:
        row = next(csv.DictReader(handle))
    return {
        "rows_per_s": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
    }


def measure(
    binary: Path, libs: Path, server: subprocess.Popen[bytes], address: str,
    workload: Workload, work: Path, seconds: float, metrics: Sequence[str] = (),
    path: str = "grpc", path_address: str = "", client_cpus: set[int] | None = None,
) -> dict[str, float]:  # fmt: skip
    """One perf_analyzer run; server CPU per request over the whole run (its warm-up and
    stabilization windows included, on both sides of the division). `metrics`: the workers'
    metrics endpoints, for a server of several workers."""
    before = answered_each(metrics, workload.model) if metrics else []
    before_total = sum(before) if metrics else answered(address, workload.model)
    cpu0 = tree_cpu_s(server.pid)
    result = perf_analyzer(
        binary, libs, path_address or address, workload, work / "pa.csv", seconds, path,
        client_cpus, server,
    )  # fmt: skip
    cpu = tree_cpu_s(server.pid) - cpu0
    after = answered_each(metrics, workload.model) if metrics else []
    requests = (sum(after) if metrics else answered(address, workload.model)) - before_total
    result["requests"] = requests
    if len(after) > 1:  # how evenly the kernel spread the client's connections
        busiest = max(a - b for a, b in zip(after, before, strict=True))
        result["busiest_worker_share"] = busiest / max(requests, 1)
    result["cpu_us_per_request"] = cpu / max(requests, 1) * 1e6
    return result


def triton(
    root: Path, repo: Path, log: Path, cpus: set[int] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """tritonserver from the nvidia-pytriton wheel's folder, on free ports (on `cpus` only, its
    stubs too, when given); the Python stub for this interpreter's version runs this
    interpreter's libpython and packages."""
    # A folder per start: a crashed server's stubs may still hold the last one's files.
    backends = Path(tempfile.mkdtemp(prefix="backends-", dir=log.parent))
    shutil.copytree(root / "backends", backends, dirs_exist_ok=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = backends / "python" / "triton_python_backend_stub"
    shutil.copy(root / "python_backend_stubs" / version / "triton_python_backend_stub", stub)
    stub.chmod(0o755)  # a wheel's files lose their modes when unzipped
    ports = [str(_free_port()) for _ in range(3)]
    env = dict(
        os.environ,
        # this Python's libpython, and the wheel's own libraries (the copied stub's relative
        # search path no longer reaches them)
        LD_LIBRARY_PATH=os.pathsep.join(
            [
                str(sysconfig.get_config_var("LIBDIR")),
                str(root.parent.parent / "nvidia_pytriton.libs"),
            ]
        ),
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
    )
    command = [
        str(root / "bin" / "tritonserver"), "--model-repository", str(repo),
        "--backend-directory", str(backends), "--grpc-port", ports[0], "--http-port", ports[1],
        "--metrics-port", ports[2], "--log-verbose", "0",
    ]  # fmt: skip
    handle = log.open("wb")
    pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
    process = subprocess.Popen(
        command, env=env, stdout=handle, stderr=subprocess.STDOUT, preexec_fn=pin,
        start_new_session=True,  # its stubs in its group: a crash's leftovers killed with it
    )  # fmt: skip
    address = f"127.0.0.1:{ports[0]}"
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(address)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if client.is_server_ready() and all(client.is_model_ready(m) for m in MODELS):
                return process, address
        except Exception:  # not up yet
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"tritonserver did not start:\n{log.read_text()[-4000:]}")


def figures(result: dict[str, float]) -> str:
    """One measurement, as the bench prints it."""
    return (
        f"{result['rows_per_s']:9.0f} rows/s, p50 {result['p50_ms']:.3f} ms, "
        f"p99 {result['p99_ms']:.3f} ms, {result['cpu_us_per_request']:.0f} µs CPU/request"
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    perf_analyzer_options(parser)
    parser.add_argument("--tritonserver", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="perf_analyzer window")
    parser.add_argument("--ferry-arg", action="append", default=[], help="extra serve flag")
    parser.add_argument(
        "--part", choices=("all", "servers", "paths", "workers", "streams"), default="all",
        help="servers: Ferry against the floor and Triton; paths: Ferry's protocols; "
        "workers: Ferry with each of --workers-list on --server-cpus; streams: Ferry and "
        "Triton by unary gRPC and by ModelStreamInfer",
    )  # fmt: skip
    parser.add_argument("--workers-list", default="1,2,4", help="workers part: N per server")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-front-end-"))
    ferry_repo, triton_repo = repositories(work)
    if args.part == "workers":
        return scale_workers(args, work, ferry_repo)
    if args.part == "streams":
        return streams(args, work, ferry_repo, triton_repo)
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        comparing = args.part in ("all", "servers")
        if comparing:
            servers["bare"] = start(
                [*python(), str(ROOT / "bench" / "bare_echo_server.py")], work / "bare.log"
            )
        servers["ferry"] = ferry(ferry_repo, work / "ferry.log", *args.ferry_arg)
        if comparing:
            servers["ferry_w2"] = ferry(ferry_repo, work / "ferry_w2.log", "--workers", "2")
            servers["ferry_spinning"] = ferry(
                work / "ferry_spinning", work / "ferry_spinning.log", *args.ferry_arg
            )
        metrics: dict[str, list[str]] = {}
        if comparing:  # the workers' metrics endpoints: their request counts add up
            metrics["ferry_w2"] = metrics_endpoints(work / "ferry_w2.log", 2)
        if comparing and args.tritonserver is not None:
            servers["triton"] = triton(args.tritonserver, triton_repo, work / "triton.log")
        runs: dict[str, dict[str, list[dict[str, float]]]] = {}
        paths: dict[str, dict[str, list[dict[str, float]]]] = {}
        for round_index in range(args.rounds):
            for workload in WORKLOADS if comparing else ():
                order = [s for s in servers if s != "bare" or workload.model == "echo"]
                if round_index % 2:
                    order.reverse()
                for name in order:
                    process, address = servers[name]
                    result = measure(
                        args.perf_analyzer, args.cuda_runtime_lib, process, address,
                        workload, work, args.seconds, metrics.get(name, ()),
                    )  # fmt: skip
                    runs.setdefault(workload.name, {}).setdefault(name, []).append(result)
                    print(
                        f"round {round_index} {workload.name:22} {name:14}: {figures(result)}",
                        flush=True,
                    )
            process, address = servers["ferry"]
            log_text = (work / "ferry.log").read_text()
            http = re.search(r"HTTP on http://([^\s,]+)", log_text)
            for workload in PATH_WORKLOADS if args.part in ("all", "paths") else ():
                for path in PATHS if round_index % 2 == 0 else reversed(PATHS):
                    result = measure(
                        args.perf_analyzer, args.cuda_runtime_lib, process, address,
                        workload, work, args.seconds, path=path,
                        path_address=http[1] if path == "http" and http else "",
                    )  # fmt: skip
                    paths.setdefault(workload.name, {}).setdefault(path, []).append(result)
                    print(
                        f"round {round_index} {workload.name:22} ferry via {path:12}: "
                        + figures(result),
                        flush=True,
                    )
    finally:
        for process, _ in servers.values():
            stop(process)
    summary: dict[str, Any] = {"servers": summarize(runs), "paths": summarize(paths)}
    settings = {
        "rounds": args.rounds, "seconds": args.seconds, "ferry_args": args.ferry_arg,
        "part": args.part,
    }  # fmt: skip
    results = {"runs": runs, "paths": paths, "summary": summary}
    written = record("front_end_cost", settings, results, args.out)
    print(f"wrote {written}")
    return 0


# 64-row requests load the model's compute; 1-row requests load the front end (each worker's
# event loop and gRPC threads run on one CPU of its share).
WORKER_WORKLOADS = (
    Workload("dlrm", 64, 64),
    Workload("dlrm_light", 64, 64),
    Workload("dlrm_light", 1, 64),
)


def scale_workers(args: argparse.Namespace, work: Path, ferry_repo: Path) -> int:
    """`ferry serve --workers N` for each N of `--workers-list`, the server confined to
    `--server-cpus` and perf_analyzer to `--client-cpus`, measured in turn round after round
    (the order reversed every other round); rows/s of each N against one worker's in the same
    round."""
    counts = [int(n) for n in args.workers_list.split(",")]
    servers: dict[int, tuple[subprocess.Popen[bytes], str, list[str]]] = {}
    try:
        for n in counts:
            log = work / f"ferry_w{n}.log"
            extra = ["--workers", str(n)] if n > 1 else []
            process, address = ferry(ferry_repo, log, *extra, cpus=args.server_cpus)
            servers[n] = (process, address, metrics_endpoints(log, n))
        runs: dict[str, dict[str, list[dict[str, float]]]] = {}
        for round_index in range(args.rounds):
            for workload in WORKER_WORKLOADS:
                order = counts if round_index % 2 == 0 else counts[::-1]
                for n in order:
                    process, address, metrics = servers[n]
                    result = measure(
                        args.perf_analyzer, args.cuda_runtime_lib, process, address, workload,
                        work, args.seconds, metrics, client_cpus=args.client_cpus,
                    )  # fmt: skip
                    runs.setdefault(workload.name, {}).setdefault(f"w{n}", []).append(result)
                    print(
                        f"round {round_index} {workload.name:22} workers {n}: "
                        f"{figures(result)}, busiest worker "
                        f"{result.get('busiest_worker_share', 1.0):.2f}",
                        flush=True,
                    )
    finally:
        for process, _, _ in servers.values():
            stop(process)
    ratios: dict[str, dict[str, list[float]]] = {}
    for workload_name, by_count in runs.items():
        base = by_count[f"w{counts[0]}"]
        for key, results in by_count.items():
            ratios.setdefault(workload_name, {})[key] = [
                r["rows_per_s"] / b["rows_per_s"] for r, b in zip(results, base, strict=True)
            ]
            print(f"{workload_name:22} {key} / w{counts[0]}: "
                  + ", ".join(f"{x:.2f}" for x in ratios[workload_name][key]))  # fmt: skip
    cpus = args.server_cpus
    settings = {
        "rounds": args.rounds, "seconds": args.seconds, "part": "workers", "workers": counts,
        "server_cpus": sorted(cpus) if cpus else None,
        "client_cpus": sorted(args.client_cpus) if args.client_cpus else None,
    }  # fmt: skip
    written = record(
        "front_end_workers", settings,
        {"runs": runs, "summary": summarize(runs), "ratios_to_first": ratios},
        args.out,
    )  # fmt: skip
    print(f"wrote {written}")
    return 0


STREAM_WORKLOADS = (
    Workload("echo", 1, 1, "x:16"),
    Workload("dlrm_light", 1, 64),
    Workload("dlrm_light", 64, 64),
)


def streams(args: argparse.Namespace, work: Path, ferry_repo: Path, triton_repo: Path) -> int:
    """Ferry and Triton's Python backend each reached by unary gRPC and by one ModelStreamInfer
    stream per perf_analyzer context, measured in turn round after round (the order reversed
    every other round): whether a client that streams pays Ferry less than Triton, where unary
    calls cost Ferry more."""
    if args.tritonserver is None:
        raise SystemExit("--part streams compares with Triton: --tritonserver is required")
    starts = {
        "ferry": lambda: ferry(
            ferry_repo, work / "ferry.log", *args.ferry_arg, cpus=args.server_cpus
        ),
        "triton": lambda: triton(
            args.tritonserver, triton_repo, work / "triton.log", args.server_cpus
        ),
    }  # fmt: skip
    servers = {name: begin() for name, begin in starts.items()}
    order = [(name, path) for name in servers for path in ("grpc", "grpc_stream")]
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    crashes: list[dict[str, str]] = []
    try:
        for round_index in range(args.rounds):
            for workload in STREAM_WORKLOADS:
                for name, path in order if round_index % 2 == 0 else order[::-1]:
                    process, address = servers[name]
                    key = f"{name}_{'stream' if path == 'grpc_stream' else 'unary'}"
                    try:
                        result = measure(
                            args.perf_analyzer, args.cuda_runtime_lib, process, address,
                            workload, work, args.seconds, path=path,
                            client_cpus=args.client_cpus,
                        )  # fmt: skip
                    except ServerDied as exc:  # recorded, and the server started afresh
                        log_tail = (work / f"{name}.log").read_text()[-2000:]
                        crashes.append(
                            {"round": str(round_index), "workload": workload.name,
                             "server": key, "what": str(exc), "log_tail": log_tail}
                        )  # fmt: skip
                        print(f"round {round_index} {workload.name:22} {key:14}: {exc}")
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(process.pid, signal.SIGKILL)  # its stubs, if Triton's
                        servers[name] = starts[name]()
                        continue
                    runs.setdefault(workload.name, {}).setdefault(key, []).append(result)
                    print(
                        f"round {round_index} {workload.name:22} {key:14}: {figures(result)}",
                        flush=True,
                    )
    finally:
        for process, _ in servers.values():
            stop(process)
    cpus = args.server_cpus
    settings = {
        "rounds": args.rounds, "seconds": args.seconds, "part": "streams",
        "server_cpus": sorted(cpus) if cpus else None,
        "client_cpus": sorted(args.client_cpus) if args.client_cpus else None,
    }  # fmt: skip
    results = {"runs": runs, "summary": summarize(runs), "crashes": crashes}
    written = record("front_end_streams", settings, results, args.out)
    print(f"wrote {written}")
    return 0


def summarize(
    runs: dict[str, dict[str, list[dict[str, float]]]],
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Median, min and max of each figure, per workload and server (or path)."""
    summary: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for workload_name, by_server in runs.items():
        entry: dict[str, dict[str, dict[str, float]]] = {}
        for name, results in by_server.items():
            entry[name] = {
                key: {
                    "median": statistics.median(r[key] for r in results),
                    "min": min(r[key] for r in results),
                    "max": max(r[key] for r in results),
                }
                for key in ("rows_per_s", "p50_ms", "p99_ms", "cpu_us_per_request")
                if key in results[0]
            }
        summary[workload_name] = entry
    return summary


if __name__ == "__main__":
    sys.exit(main())
