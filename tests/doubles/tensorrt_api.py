"""A double of TensorRT's Python runtime API (TensorRT 11: the names were checked against the
11.4 bindings' docstrings with ../shared/tools/trt-api-reference.sh), for machines without
TensorRT and without a GPU, which is every CI machine.

It implements only what a runtime user calls, with TensorRT's contracts: `Runtime(logger)`,
`deserialize_cuda_engine` returning None and logging an error for a plan it cannot load, the
engine's I/O tensor and optimization profile queries, and an execution context whose
`set_optimization_profile_async`, `set_input_shape` and `set_tensor_address` return False (with
a logged error) where TensorRT does, and whose `execute_async_v3` enqueues the computation on
the stream (tests/doubles/cuda_host.py), reading and writing the bound addresses.

Its "plans" are its own format (`write_plan`): a magic tag, then JSON naming the tensors, the
profiles, the TensorRT version that "built" it and one of two small functions it computes.
"""

from __future__ import annotations

import ctypes
import enum
import json
import math
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tests.doubles.cuda_host import STREAMS

VERSION = "11.4.0.106"
MAGIC = b"FTRTDBL1"


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9
    FP4 = 10


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class TensorLocation(enum.Enum):
    DEVICE = 0
    HOST = 1


_NUMPY = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT32: np.int32,
    DataType.INT64: np.int64,
    DataType.INT8: np.int8,
    DataType.UINT8: np.uint8,
    DataType.BOOL: np.bool_,
}


class ILogger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    def __init__(self) -> None:
        return None

    def log(self, severity: ILogger.Severity, msg: str) -> None:
        raise NotImplementedError


class Logger(ILogger):
    def __init__(self, min_severity: ILogger.Severity = ILogger.Severity.WARNING) -> None:
        super().__init__()
        self.min_severity = min_severity

    def log(self, severity: ILogger.Severity, msg: str) -> None:
        return None


# ---- the functions a double plan computes ------------------------------------------------------


def _affine(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    x = inputs["x"]
    return {"y": 2 * x + 1, "total": x.sum(axis=-1, keepdims=True)}


def _affine_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    x = shapes["x"]
    return {"y": x, "total": (*x[:-1], 1)}


def _ctr(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    logit = inputs["dense"].sum(axis=1) + 0.001 * (inputs["sparse"] % 97).sum(axis=1)
    return {"ctr": (1 / (1 + np.exp(-logit))).astype(np.float32)[:, None]}


def _ctr_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    return {"ctr": (shapes["dense"][0], 1)}


FUNCTIONS = {"affine": (_affine, _affine_shapes), "ctr": (_ctr, _ctr_shapes)}


def write_plan(
    path: Path,
    function: str,
    tensors: Sequence[dict[str, Any]],
    profiles: Sequence[dict[str, Sequence[Sequence[int]]]],
    version: str = VERSION,
) -> Path:
    """A plan the double deserializes. tensors: {name, mode INPUT|OUTPUT, dtype (DataType
    member name), shape, optional location HOST, optional vectorized dim}; profiles: per profile,
    input name → [min, opt, max] shapes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "version": version,
        "function": function,
        "tensors": list(tensors),
        "profiles": list(profiles),
    }
    path.write_bytes(MAGIC + json.dumps(body).encode())
    return path


class Runtime:
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
        data = bytes(serialized_engine)
        if not data.startswith(MAGIC):
            self.logger.log(
                ILogger.Severity.ERROR,
                "IRuntime::deserializeCudaEngine: the plan's magic tag is wrong "
                "(not a serialized engine, or corrupt)",
            )
            return None
        try:
            body = json.loads(data[len(MAGIC) :])
        except ValueError:
            self.logger.log(ILogger.Severity.ERROR, "IRuntime::deserializeCudaEngine: truncated")
            return None
        if body["version"] != VERSION:
            self.logger.log(
                ILogger.Severity.ERROR,
                f"IRuntime::deserializeCudaEngine: the plan was built by TensorRT "
                f"{body['version']}; this runtime is {VERSION}",
            )
            return None
        return ICudaEngine(body, self.logger)


class ICudaEngine:
    def __init__(self, body: dict[str, Any], logger: ILogger) -> None:
        self._tensors = {t["name"]: t for t in body["tensors"]}
        self._order = [t["name"] for t in body["tensors"]]
        self._profiles: list[dict[str, list[list[int]]]] = body["profiles"]
        self._function = body["function"]
        self.logger = logger
        self.contexts = 0
        self.fail_execute = False  # tests flip it to see a failed enqueue reported

    @property
    def num_io_tensors(self) -> int:
        return len(self._order)

    @property
    def num_optimization_profiles(self) -> int:
        return max(1, len(self._profiles))

    def get_tensor_name(self, index: int) -> str:
        return self._order[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode[self._tensors[name]["mode"]]

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType[self._tensors[name]["dtype"]]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensors[name]["shape"])

    def get_tensor_location(self, name: str) -> TensorLocation:
        return TensorLocation[self._tensors[name].get("location", "DEVICE")]

    def get_tensor_vectorized_dim(self, name: str) -> int:
        return int(self._tensors[name].get("vectorized", -1))

    def get_tensor_format_desc(self, name: str) -> str:
        return "Two wide channel vectorized row major FP16 format"

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        return [tuple(d) for d in self._profiles[profile_index][name]]

    def create_execution_context(self) -> IExecutionContext:
        self.contexts += 1
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self.active_optimization_profile = 0
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, int] = {}
        self.executions = 0  # execute_async_v3 calls (a replayed graph makes none)

    def _error(self, message: str) -> bool:
        self.engine.logger.log(ILogger.Severity.ERROR, message)
        return False

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        if not 0 <= profile_index < self.engine.num_optimization_profiles:
            return self._error(f"setOptimizationProfileAsync: no profile {profile_index}")
        if stream_handle not in STREAMS:
            return self._error("setOptimizationProfileAsync: invalid stream")
        self.active_optimization_profile = profile_index
        self._shapes.clear()
        return True

    def set_input_shape(self, name: str, shape: Sequence[int]) -> bool:
        engine = self.engine
        if name not in engine._tensors or engine.get_tensor_mode(name) != TensorIOMode.INPUT:
            return self._error(f"setInputShape: '{name}' is not an input")
        shape = tuple(int(d) for d in shape)
        declared = engine.get_tensor_shape(name)
        low, _, high = engine.get_tensor_profile_shape(name, self.active_optimization_profile)
        if len(shape) != len(declared) or any(
            d != s and d != -1 for d, s in zip(declared, shape, strict=True)
        ):
            return self._error(f"setInputShape: {list(shape)} does not match {list(declared)}")
        if any(not lo <= s <= hi for lo, s, hi in zip(low, shape, high, strict=True)):
            return self._error(
                f"setInputShape: {list(shape)} is outside profile "
                f"{self.active_optimization_profile} ({list(low)}..{list(high)})"
            )
        self._shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        engine = self.engine
        if engine.get_tensor_mode(name) == TensorIOMode.INPUT:
            return self._shapes.get(name, engine.get_tensor_shape(name))
        inputs = [n for n in engine._order if engine.get_tensor_mode(n) == TensorIOMode.INPUT]
        if any(n not in self._shapes for n in inputs):
            return engine.get_tensor_shape(name)
        return FUNCTIONS[engine._function][1](self._shapes)[name]

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if name not in self.engine._tensors or not memory:
            return self._error(f"setTensorAddress: bad tensor '{name}' or null address")
        self._addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        engine = self.engine
        stream = STREAMS.get(stream_handle)
        if stream is None:
            return self._error("enqueueV3: invalid stream")
        if engine.fail_execute:
            return self._error("enqueueV3: an injected failure")
        names = engine._order
        inputs = [n for n in names if engine.get_tensor_mode(n) == TensorIOMode.INPUT]
        missing = [n for n in inputs if n not in self._shapes]
        if missing:
            return self._error(f"enqueueV3: input shapes not set: {missing}")
        unbound = [n for n in names if n not in self._addresses]
        if unbound:
            return self._error(f"enqueueV3: addresses not set: {unbound}")
        self.executions += 1
        # What the kernels see is fixed now: shapes and addresses as of this call.
        shapes = dict(self._shapes)
        shapes.update(FUNCTIONS[engine._function][1](shapes))
        addresses = dict(self._addresses)
        dtypes = {n: _NUMPY[engine.get_tensor_dtype(n)] for n in names}
        compute = FUNCTIONS[engine._function][0]

        def kernel() -> None:
            values = {n: _array(addresses[n], dtypes[n], shapes[n]) for n in inputs}
            for name, result in compute({k: v.copy() for k, v in values.items()}).items():
                _array(addresses[name], dtypes[name], shapes[name])[...] = result

        stream.enqueue(kernel)
        return True


def _array(address: int, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    count = math.prod(shape)
    memory = (ctypes.c_byte * (count * np.dtype(dtype).itemsize)).from_address(address)
    return np.frombuffer(memory, dtype=dtype, count=count).reshape(shape)


def module() -> types.ModuleType:
    """The double as a module, as `import tensorrt` would give it."""
    trt = types.ModuleType("tensorrt")
    for name, value in {
        "__version__": VERSION,
        "DataType": DataType,
        "TensorIOMode": TensorIOMode,
        "TensorLocation": TensorLocation,
        "ILogger": ILogger,
        "Logger": Logger,
        "Runtime": Runtime,
        "ICudaEngine": ICudaEngine,
        "IExecutionContext": IExecutionContext,
    }.items():
        setattr(trt, name, value)
    return trt
