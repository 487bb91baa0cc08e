"""What the load consists of: a pool of ready-to-send requests built from ModelMetadata.

Requests are generated once, before the clock starts, and serialized once: sending one costs
the client no numpy and no protobuf work. Inputs are random values in valid ranges (integer ids
below --id-range, floats from a normal distribution) or rows replayed from an .npz file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from ferry.proto import grpc_service_pb2 as pb
from ferry.proto import grpc_service_pb2_grpc as pb_grpc

NUMPY_TYPES = {
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


class WorkloadError(ValueError):
    """A workload option that cannot work against this model; the message says why."""


@dataclass(frozen=True)
class Choice:
    """Integers drawn with weights: rows per request, sizes of free dims, priorities."""

    values: tuple[int, ...]
    weights: tuple[float, ...]

    @classmethod
    def parse(cls, text: str, what: str) -> Choice:
        """N; LOW:HIGH (uniform); V=W,V=W (values with weights); or @FILE (one value per line,
        optionally followed by its weight)."""
        text = text.strip()
        try:
            if text.startswith("@"):
                pairs = []
                for line in Path(text[1:]).read_text().split("\n"):
                    fields = line.split("#")[0].split()
                    if fields:
                        pairs.append((int(fields[0]), float(fields[1]) if len(fields) > 1 else 1.0))
                return cls.weighted(pairs, what)
            if "=" in text:
                pairs = [(int(v), float(w)) for v, w in (p.split("=") for p in text.split(","))]
                return cls.weighted(pairs, what)
            if ":" in text:
                low, high = (int(v) for v in text.split(":"))
                if not 0 < low <= high:
                    raise WorkloadError(f"{what}: need 0 < LOW <= HIGH, got {text}")
                span = tuple(range(low, high + 1))
                return cls(span, tuple(1.0 for _ in span))
            value = int(text)
        except (OSError, ValueError) as exc:
            if isinstance(exc, WorkloadError):
                raise
            raise WorkloadError(f"{what}: cannot read '{text}': {exc}") from None
        return cls.weighted([(value, 1.0)], what)

    @classmethod
    def weighted(cls, pairs: list[tuple[int, float]], what: str) -> Choice:
        if not pairs or any(v < 0 or w < 0 for v, w in pairs) or sum(w for _, w in pairs) <= 0:
            raise WorkloadError(f"{what}: need non-negative values and a positive total weight")
        return cls(tuple(v for v, _ in pairs), tuple(w for _, w in pairs))

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        p = np.asarray(self.weights) / sum(self.weights)
        return rng.choice(np.asarray(self.values), size=n, p=p)

    @property
    def mean(self) -> float:
        return float(np.average(self.values, weights=self.weights))


@dataclass(frozen=True)
class Workload:
    model: str
    version: str = ""
    rows: Choice = Choice((1,), (1.0,))
    free_dim: Choice = Choice((16,), (1.0,))
    id_range: int = 1000
    priorities: Choice | None = None
    deadline_s: float | None = None
    replay: Path | None = None
    pool: int = 64
    seed: int = 0


@dataclass(frozen=True)
class Prepared:
    """One request ready to send: its serialized bytes and its row count."""

    payload: bytes
    rows: int


async def prepare(channel: grpc.aio.Channel, workload: Workload) -> list[Prepared]:
    """The request pool, built from the model's metadata (and config, for the batch dim)."""
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    meta = await stub.ModelMetadata(
        pb.ModelMetadataRequest(name=workload.model, version=workload.version)
    )
    config = (
        await stub.ModelConfig(pb.ModelConfigRequest(name=workload.model, version=workload.version))
    ).config
    batched = config.max_batch_size > 0
    rng = np.random.default_rng(workload.seed)
    replay = dict(np.load(workload.replay)) if workload.replay else None
    offset = 0
    rows_drawn = workload.rows.draw(rng, workload.pool) if batched else np.ones(workload.pool, int)
    pool = []
    for index in range(workload.pool):
        rows = int(rows_drawn[index])
        request = pb.ModelInferRequest(model_name=workload.model, model_version=workload.version)
        free = int(workload.free_dim.draw(rng, 1)[0])
        for tensor in meta.inputs:
            dtype = NUMPY_TYPES.get(tensor.datatype)
            if dtype is None:
                raise WorkloadError(
                    f"input {tensor.name}: datatype {tensor.datatype} not supported"
                )
            model_dims = [int(d) for d in tensor.shape[1 if batched else 0 :]]
            dims = [free if d < 0 else d for d in model_dims]
            if replay is not None and tensor.name in replay:
                own = replay[tensor.name].shape[1 if batched else 0 :]
                if len(own) == len(model_dims):  # free dims take the replayed data's sizes
                    dims = [int(o) if d < 0 else d for d, o in zip(model_dims, own, strict=True)]
            shape = [rows, *dims] if batched else dims
            if replay is not None:
                data = _replayed(replay, tensor.name, dtype, shape, offset, batched)
            elif np.issubdtype(dtype, np.integer):
                data = rng.integers(0, workload.id_range, size=shape).astype(dtype)
            elif dtype is np.bool_:
                data = rng.integers(0, 2, size=shape).astype(dtype)
            else:
                data = rng.standard_normal(shape).astype(dtype)
            request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=shape)
            request.raw_input_contents.append(data.tobytes())
        offset += rows
        if workload.priorities is not None:
            request.parameters["priority"].uint64_param = int(workload.priorities.draw(rng, 1)[0])
        pool.append(Prepared(request.SerializeToString(), rows))
    return pool


def _replayed(
    arrays: dict[str, np.ndarray],
    name: str,
    dtype: type,
    shape: list[int],
    offset: int,
    batched: bool,
) -> np.ndarray:
    if name not in arrays:
        raise WorkloadError(f"replay file has no array '{name}' (it has: {', '.join(arrays)})")
    source = arrays[name]
    if source.dtype != np.dtype(dtype):
        raise WorkloadError(f"replay array '{name}' is {source.dtype}, the model wants {dtype}")
    if not batched:
        return source.reshape(shape)
    if list(source.shape[1:]) != shape[1:]:
        raise WorkloadError(
            f"replay array '{name}' rows are {list(source.shape[1:])}, the model wants {shape[1:]}"
        )
    index = (offset + np.arange(shape[0])) % source.shape[0]
    return np.asarray(source[index])


def with_id(payload: bytes, request_id: str) -> bytes:
    """The serialized request with its `id` set: appending a field to a protobuf message sets it
    (the last occurrence wins), so no re-serialization is needed per send."""
    return payload + bytes(pb.ModelInferRequest(id=request_id).SerializeToString())
