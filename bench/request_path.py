"""Ferry's own work on a request, apart from gRPC: CPU per request of the inference path called
in-process, against what any server must spend on the same request.

bench/front_end_cost.py measures whole servers through gRPC, where grpc.aio's per-call work (the
bare server's cost) and a shared machine's drift are most of what it sees; a change of a few
microseconds in Ferry's own code does not show there. Here one process on one CPU runs, in
alternating passes:

- **message**: what every gRPC server does with a request in Python: parse the bytes, build
  the answer (the input copied to the output, as bench/bare_echo_server.py does), serialize it;
- **ferry**: parse, `Inference.infer` (server/inference.py: lookup, decode and validation,
  memory budget, scheduler, batcher, the instance, encode, statistics and metrics), serialize;
  `--in-flight` closed-loop callers, so batches form as in a server under that load;
- **model**: ONNX Runtime called directly on the batch size Ferry formed in the pass before,
  with the threads Ferry's instance gets on one CPU: the compute a request cannot avoid.

Ferry's own work is `ferry - message - model`; `loop_thread` is the part of `ferry` spent on
the event loop's thread (the rest: the instance's thread, which also gathers the batch). With
the bare gRPC server's CPU per request from front_end_cost.py, it says what a request through
Ferry can cost at the least.

    python -m bench.request_path [--rounds 5] [--requests 20000] [--in-flight 64] [--cpu 0]
                                 [--idle-us 0] [--profile]

--profile prints the functions the ferry pass spends most in (cProfile; its overhead inflates
the totals, so profiled passes are not recorded). Writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import uvloop

from bench.harness import record, write_light_dlrm
from ferry.common.datatypes import DATATYPES
from ferry.proto import grpc_service_pb2 as pb
from ferry.server import answers
from ferry.server.app import FerryServer
from ferry.server.config import ServerConfig
from ferry.server.example_repo import write_example_repo
from ferry.server.inference import Inference


@dataclass(frozen=True)
class Workload:
    model: str
    rows: int

    @property
    def name(self) -> str:
        return f"{self.model} {self.rows} row{'s' if self.rows > 1 else ''}"


WORKLOADS = (Workload("echo", 1), Workload("dlrm_light", 1), Workload("dlrm_light", 64))


def repository(work: Path) -> Path:
    """The example `echo` and the light DLRM (`dlrm`'s config, embedding width 16)."""
    examples, repo = work / "examples", work / "repo"
    write_example_repo(examples)
    repo.mkdir()
    os.rename(examples / "echo", repo / "echo")
    write_light_dlrm(examples, repo / "dlrm_light")
    return repo


def request_bytes(meta: pb.ModelMetadataResponse, rows: int) -> bytes:
    """A serialized request of `rows` rows of zeros (ids in range) for the model `meta` names."""
    request = pb.ModelInferRequest(model_name=meta.name)
    for tensor in meta.inputs:
        shape = [rows] + [16 if d < 0 else int(d) for d in tensor.shape[1:]]
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=shape)
        zeros = np.zeros(shape, DATATYPES[tensor.datatype].numpy)
        request.raw_input_contents.append(zeros.tobytes())
    return bytes(request.SerializeToString())


def message_work(data: bytes) -> bytes:
    """The bare server's ModelInfer: parse, the first input back as the output, serialize."""
    request = pb.ModelInferRequest.FromString(data)
    response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
    tensor = response.outputs.add(name="y", datatype=request.inputs[0].datatype)
    tensor.shape.extend(request.inputs[0].shape)
    response.raw_output_contents.append(request.raw_input_contents[0])
    return bytes(response.SerializeToString())


def idle(seconds: float) -> None:
    """Leave the CPU idle for `seconds` (a blocking sleep, the event loop's included): what a
    server does between requests at light load. On a VM the next work then runs slower (its
    caches cold, its virtual CPU woken), which a closed loop with no gap never shows; `--idle-us`
    measures how much, for Ferry and the baselines alike."""
    if seconds > 0:
        time.sleep(seconds)


def message_loop(data: bytes, requests: int, idle_s: float = 0.0) -> None:
    for _ in range(requests):
        idle(idle_s)
        message_work(data)


def cpu_us(run: Callable[[], None], requests: int) -> tuple[float, float]:
    """CPU microseconds per request of `run`: every thread of the process, and the calling
    thread's (the event loop's, whose one CPU bounds what one worker's front end can serve)."""
    before, own_before = time.process_time(), _thread_s()
    run()
    spent, own = time.process_time() - before, _thread_s() - own_before
    return spent / requests * 1e6, own / requests * 1e6


def _thread_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


class Bench:
    """One Ferry in this process, its models loaded, and the passes that measure it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, server: FerryServer) -> None:
        self.loop = loop
        self.server = server
        self.inference = Inference(server.repository, server.telemetry, server.budget)

    def executions(self, model: str) -> tuple[int, int]:
        """Rows answered and batches run for `model` so far."""
        stats = answers.model_statistics(self.server.repository, model, "").model_stats[0]
        return int(stats.inference_count), int(stats.execution_count)

    def ferry(self, data: bytes, requests: int, in_flight: int, idle_s: float = 0.0) -> None:
        """`requests` requests through the inference path by `in_flight` closed-loop callers,
        each idle for `idle_s` before each request (see `idle`)."""
        inference = self.inference
        left = [requests]

        async def caller() -> None:
            while left[0] > 0:
                left[0] -= 1
                idle(idle_s)
                request = pb.ModelInferRequest.FromString(data)
                response = await inference.infer(request, None, (), "ModelInfer")
                response.SerializeToString()

        async def all_callers() -> None:
            await asyncio.gather(*(caller() for _ in range(in_flight)))

        self.loop.run_until_complete(all_callers())


def model_session(repo: Path, model: str) -> tuple[ort.InferenceSession, dict[str, np.ndarray]]:
    """ONNX Runtime on `model`'s file, one thread (what Ferry's instance gets on one CPU), and
    inputs of a large batch to slice from."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    path = repo / model / "1" / "model.onnx"
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {}
    for tensor in session.get_inputs():
        dims = [1024] + [16 if not isinstance(d, int) else d for d in tensor.shape[1:]]
        dtype = np.int64 if "int64" in tensor.type else np.float32
        feeds[tensor.name] = np.zeros(dims, dtype)
    return session, feeds


def model_us(
    session: ort.InferenceSession,
    feeds: dict[str, np.ndarray],
    batch_rows: int,
    batches: int,
    idle_s: float = 0.0,
) -> float:
    """CPU microseconds per batch of `batch_rows` rows, ONNX Runtime called directly."""
    sliced = {name: array[:batch_rows] for name, array in feeds.items()}
    for _ in range(10):
        session.run(None, sliced)
    before = time.process_time()
    for _ in range(batches):
        idle(idle_s)
        session.run(None, sliced)
    return (time.process_time() - before) / batches * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20000, help="per pass")
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument(
        "--idle-us", type=float, default=0.0,
        help="the CPU left idle before each request (and each baseline call): light load",
    )  # fmt: skip
    parser.add_argument("--cpu", type=int, default=min(os.sched_getaffinity(0)))
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path, help="folder for the JSON record (bench/results)")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})  # before the server starts: every thread inherits it
    repo = repository(Path(tempfile.mkdtemp(prefix="ferry-request-path-")))
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    config = ServerConfig(model_repository=repo, grpc_port=0, http_port=-1, metrics_port=0)
    server = FerryServer(config)
    loop.run_until_complete(server.start())
    runs: dict[str, dict[str, list[float]]] = {}
    idle_s = args.idle_us / 1e6
    try:
        bench = Bench(loop, server)
        for workload in WORKLOADS:
            meta = answers.model_metadata(server.repository, workload.model, "")
            data = request_bytes(meta, workload.rows)
            n = args.requests if workload.rows == 1 else max(args.requests // 8, 1000)
            session, feeds = model_session(repo, workload.model)
            bench.ferry(data, n // 4, args.in_flight)  # warm: caches, the batcher's history
            if args.profile:
                profiler = cProfile.Profile()
                profiler.runcall(bench.ferry, data, n, args.in_flight)
                print(f"--- {workload.name}: where the ferry pass spends its time (profiled)")
                pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            figures = runs.setdefault(workload.name, {})
            for round_index in range(args.rounds):
                rows0, batches0 = bench.executions(workload.model)
                ferry, loop_thread = cpu_us(
                    partial(bench.ferry, data, n, args.in_flight, idle_s), n
                )
                rows1, batches1 = bench.executions(workload.model)
                batch_rows = max(1, round((rows1 - rows0) / max(batches1 - batches0, 1)))
                batches = max(50, n // 64) if not idle_s else n * workload.rows // batch_rows
                per_batch = model_us(session, feeds, batch_rows, batches, idle_s)
                model = per_batch * workload.rows / batch_rows
                message = cpu_us(partial(message_loop, data, n, idle_s), n)[0]
                own = ferry - message - model
                for key, value in (
                    ("ferry_us", ferry), ("loop_thread_us", loop_thread),
                    ("message_us", message), ("model_us", model), ("own_us", own),
                    ("batch_rows", float(batch_rows)),
                ):  # fmt: skip
                    figures.setdefault(key, []).append(value)
                print(
                    f"round {round_index} {workload.name:18}: ferry {ferry:6.1f} us (loop thread "
                    f"{loop_thread:5.1f}), message "
                    f"{message:5.1f}, model {model:6.1f} (batches of {batch_rows} rows), "
                    f"own {own:6.1f}",
                    flush=True,
                )
    finally:
        loop.run_until_complete(server.stop(0))
        loop.close()
    summary = {
        name: {key: summarize(values) for key, values in measured.items()}
        for name, measured in runs.items()
    }
    print("\nper request, median of rounds (range), microseconds of CPU:")
    for name, summaries in summary.items():
        line = ", ".join(
            f"{key.removesuffix('_us')} {f['median']:.1f} ({f['min']:.1f}-{f['max']:.1f})"
            for key, f in summaries.items()
        )
        print(f"  {name:18} {line}")
    settings = {
        "rounds": args.rounds, "requests": args.requests, "in_flight": args.in_flight,
        "cpu": args.cpu, "idle_us": args.idle_us,
    }  # fmt: skip
    written = record("request_path", settings, {"runs": runs, "summary": summary}, args.out)
    print(f"wrote {written}")
    return 0


def summarize(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


if __name__ == "__main__":
    raise SystemExit(main())
