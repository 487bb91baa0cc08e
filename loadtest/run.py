"""Closed-loop load test against any server that speaks Triton's gRPC protocol.

    python loadtest/run.py --address 127.0.0.1:8001 --model dlrm --concurrency 32 \
        --rows 64 --duration 10

N workers each keep one request in flight for `duration` seconds. Inputs are generated once from
ModelMetadata (random values; integer ids below --id-range; free dims set to --free-dim). Prints
achieved requests/s and rows/s, latency percentiles and errors by status code; --json writes the
same as a file. It is a client only: Ferry's generated stubs, never server internals.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proto import grpc_service_pb2 as pb
from proto import grpc_service_pb2_grpc as pb_grpc

_NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


@dataclass
class LoadResult:
    model: str
    concurrency: int
    rows_per_request: int
    duration_s: float
    requests: int
    errors: dict[str, int]
    requests_per_s: float
    rows_per_s: float
    latency_ms: dict[str, float] = field(default_factory=dict)


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds (numpy's linear interpolation)."""
    if not samples_s:
        return {}
    ms = np.asarray(samples_s) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(ms.max())}


async def build_request(
    stub: pb_grpc.GRPCInferenceServiceStub,
    model: str,
    rows: int,
    free_dim: int,
    id_range: int,
    seed: int = 0,
) -> pb.ModelInferRequest:
    """A request with `rows` rows of random inputs shaped by the model's metadata."""
    meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name=model))
    config = (await stub.ModelConfig(pb.ModelConfigRequest(name=model))).config
    batched = config.max_batch_size > 0
    rng = np.random.default_rng(seed)
    request = pb.ModelInferRequest(model_name=model)
    for tensor in meta.inputs:
        dims = [free_dim if d < 0 else d for d in tensor.shape[1 if batched else 0 :]]
        shape = [rows, *dims] if batched else dims
        dtype = _NUMPY.get(tensor.datatype)
        if dtype is None:
            raise SystemExit(f"input {tensor.name}: datatype {tensor.datatype} not supported here")
        data: np.ndarray
        if np.issubdtype(dtype, np.integer):
            data = rng.integers(0, id_range, size=shape).astype(dtype)
        else:
            data = rng.standard_normal(shape).astype(dtype)
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=shape)
        request.raw_input_contents.append(data.tobytes())
    return request


async def run_closed_loop(
    address: str,
    model: str,
    *,
    concurrency: int,
    rows: int,
    duration_s: float,
    free_dim: int | tuple[int, int] = 16,
    id_range: int = 1000,
    channels: int = 1,
    warmup_s: float = 1.0,
    priority: int = 0,
    pool: int = 64,
) -> LoadResult:
    """Keep `concurrency` requests in flight for `duration_s` (after a warm-up) and measure.

    `free_dim` sets the model's -1 dims: one size, or a (low, high) range from which `pool`
    requests draw their sizes uniformly (seeded), sent in turn. `priority` > 0 sets the request
    parameter of that name.
    """
    opened = [grpc.aio.insecure_channel(address) for _ in range(max(channels, 1))]
    try:
        stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in opened]
        if isinstance(free_dim, tuple):
            sizes = np.random.default_rng(7).integers(free_dim[0], free_dim[1] + 1, pool)
            requests = [
                await build_request(stubs[0], model, rows, int(n), id_range, seed=i)
                for i, n in enumerate(sizes)
            ]
        else:
            requests = [await build_request(stubs[0], model, rows, free_dim, id_range)]
        if priority:
            for request in requests:
                request.parameters["priority"].uint64_param = priority
        turn = itertools.count()
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        loop = asyncio.get_running_loop()
        start = loop.time() + warmup_s
        stop = start + duration_s

        async def worker(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
            while (now := loop.time()) < stop:
                request = requests[next(turn) % len(requests)]
                t0 = time.perf_counter()
                try:
                    await stub.ModelInfer(request)
                    ok = True
                except grpc.aio.AioRpcError as exc:
                    ok = False
                    code = exc.code().name
                latency = time.perf_counter() - t0
                if now >= start:
                    if ok:
                        latencies.append(latency)
                    else:
                        errors[code] += 1

        await asyncio.gather(*(worker(stubs[i % len(stubs)]) for i in range(concurrency)))
        done = len(latencies)
        return LoadResult(
            model=model,
            concurrency=concurrency,
            rows_per_request=rows,
            duration_s=duration_s,
            requests=done,
            errors=dict(errors),
            requests_per_s=done / duration_s,
            rows_per_s=done * rows / duration_s,
            latency_ms=percentiles(latencies),
        )
    finally:
        for channel in opened:
            await channel.close()


def report(result: LoadResult) -> str:
    lat = result.latency_ms
    lines = [
        f"model {result.model}: concurrency {result.concurrency}, "
        f"{result.rows_per_request} rows/request, {result.duration_s:.1f} s",
        f"  requests/s {result.requests_per_s:10.1f}   rows/s {result.rows_per_s:12.1f}",
        "  latency ms  " + "  ".join(f"{k} {v:.3f}" for k, v in lat.items()),
        "  errors      " + (", ".join(f"{k}: {v}" for k, v in result.errors.items()) or "none"),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--address", default="127.0.0.1:8001")
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds, after warm-up")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not measured")
    parser.add_argument("--channels", type=int, default=1, help="gRPC channels to spread over")
    parser.add_argument(
        "--free-dim",
        default="16",
        help="size for -1 dims: N, or LOW:HIGH for a pool of requests of sizes drawn in that range",
    )
    parser.add_argument("--priority", type=int, default=0, help="request priority (0 = default)")
    parser.add_argument("--id-range", type=int, default=1000, help="integer inputs in [0, N)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.rows < 1 or args.duration <= 0:
        parser.error("--concurrency and --rows must be >= 1 and --duration > 0")
    low, _, high = args.free_dim.partition(":")
    try:
        free_dim: int | tuple[int, int] = (int(low), int(high)) if high else int(low)
    except ValueError:
        parser.error("--free-dim takes N or LOW:HIGH")
    import uvloop

    result = uvloop.run(
        run_closed_loop(
            args.address,
            args.model,
            concurrency=args.concurrency,
            rows=args.rows,
            duration_s=args.duration,
            free_dim=free_dim,
            id_range=args.id_range,
            channels=args.channels,
            warmup_s=args.warmup,
            priority=args.priority,
        )
    )
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 0 if result.requests else 1


if __name__ == "__main__":
    sys.exit(main())
