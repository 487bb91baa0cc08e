"""A double of TensorRT's builder API (TensorRT 11 names, checked against the 11.4 bindings'
docstrings with ../shared/tools/trt-api-reference.sh), for machines without TensorRT, which is
every CI machine: `Builder(logger)`, `create_network`, `OnnxParser(network, logger)` with
`parse_from_file`, `num_errors` and `get_error(i).desc()`, the builder config (optimization
level, profiles, flags, timing cache) and `build_serialized_network`, returning None and logging
an error where TensorRT does.

The network it parses holds only the ONNX graph's inputs and outputs (read with `onnx`), and it
"builds" a plan in the runtime double's format (tests/doubles/tensorrt_api.py), carrying the
profiles it was given, so that the runtime double and Ferry's TensorRT engine load it. It keeps
what a test checks: the flags set, the level, and the timing cache's keys (one per build of a
network shape), to see a cache carried from one build to the next.
"""

from __future__ import annotations

import enum
import json
import types
from pathlib import Path
from typing import Any

import onnx

from tests.doubles import tensorrt_api
from tests.doubles.tensorrt_api import MAGIC, VERSION, ILogger

_ONNX_TO_TRT = {
    onnx.TensorProto.FLOAT: "FLOAT",
    onnx.TensorProto.FLOAT16: "HALF",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.BOOL: "BOOL",
}


class BuilderFlag(enum.IntEnum):
    GPU_FALLBACK = 0
    DISABLE_TIMING_CACHE = 1
    VERSION_COMPATIBLE = 2
    EXCLUDE_LEAN_RUNTIME = 3


class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: str) -> None:
        self.name = name
        self.shape = shape
        self.dtype = dtype


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[ITensor] = []
        self.outputs: list[ITensor] = []
        self.quantized = False

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, index: int) -> ITensor:
        return self.inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self.outputs[index]


class IParserError:
    def __init__(self, text: str) -> None:
        self._text = text

    def desc(self) -> str:
        return self._text


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        self._network = network
        self._logger = logger
        self._errors: list[IParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> IParserError:
        return self._errors[index]

    def parse_from_file(self, model: str) -> bool:
        try:
            graph = onnx.load(model).graph
        except Exception as exc:  # onnx raises its decoder's errors
            self._errors.append(IParserError(f"failed to parse the ONNX file: {exc}"))
            return False
        weights = {i.name for i in graph.initializer}

        def tensor(value: onnx.ValueInfoProto) -> ITensor:
            kind = value.type.tensor_type
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim)
            return ITensor(value.name, shape, _ONNX_TO_TRT.get(kind.elem_type, "FLOAT"))

        self._network.inputs = [tensor(v) for v in graph.input if v.name not in weights]
        self._network.outputs = [tensor(v) for v in graph.output]
        self._network.quantized = any(n.op_type == "QuantizeLinear" for n in graph.node)
        return True


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, list[list[int]]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
        self.shapes[input] = [list(min), list(opt), list(max)]


class ITimingCache:
    def __init__(self, keys: list[str]) -> None:
        self.keys = keys

    def serialize(self) -> bytes:
        return json.dumps(self.keys).encode()


class IBuilderConfig:
    def __init__(self, logger: ILogger) -> None:
        self._logger = logger
        self.builder_optimization_level = 3
        self.profiles: list[IOptimizationProfile] = []
        self.flags: set[BuilderFlag] = set()
        self.cache: ITimingCache | None = None

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        data = bytes(serialized_timing_cache)
        return ITimingCache(json.loads(data) if data else [])

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self.cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache:
        assert self.cache is not None
        return self.cache


class Builder:
    built: list[dict[str, Any]] = []  # every build's settings, for tests to read

    def __init__(self, logger: ILogger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig(self.logger)

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(
        self, network: INetworkDefinition, config: IBuilderConfig
    ) -> bytes | None:
        dynamic = [t.name for t in network.inputs if -1 in t.shape]
        if dynamic and not config.profiles:
            self.logger.log(
                ILogger.Severity.ERROR,
                f"Network has dynamic or shape inputs, but no optimization profile has been "
                f"defined (inputs {dynamic})",
            )
            return None
        if BuilderFlag.EXCLUDE_LEAN_RUNTIME in config.flags and (
            BuilderFlag.VERSION_COMPATIBLE not in config.flags
        ):
            self.logger.log(ILogger.Severity.ERROR, "EXCLUDE_LEAN_RUNTIME needs VERSION_COMPATIBLE")
            return None
        key = ",".join(f"{t.name}:{t.shape}" for t in network.inputs)
        hit = config.cache is not None and key in config.cache.keys
        if config.cache is not None and not hit:
            config.cache.keys.append(key)
        Builder.built.append(
            {
                "level": config.builder_optimization_level,
                "flags": sorted(f.name for f in config.flags),
                "cache_hit": hit,
                "quantized": network.quantized,
            }
        )
        tensors = [
            {"name": t.name, "mode": mode, "dtype": t.dtype, "shape": list(t.shape)}
            for mode, group in (("INPUT", network.inputs), ("OUTPUT", network.outputs))
            for t in group
        ]
        profiles = [p.shapes for p in config.profiles]
        names = {t.name for t in network.inputs}
        function = "ctr" if names == {"dense", "sparse"} else "affine"
        body = {"version": VERSION, "function": function, "tensors": tensors}
        body["profiles"] = profiles
        return MAGIC + json.dumps(body).encode()


def module() -> types.ModuleType:
    """The runtime double with the builder API added, as `import tensorrt` would give it."""
    trt = tensorrt_api.module()
    for name, value in {
        "Builder": Builder,
        "BuilderFlag": BuilderFlag,
        "OnnxParser": OnnxParser,
        "INetworkDefinition": INetworkDefinition,
        "IBuilderConfig": IBuilderConfig,
        "IOptimizationProfile": IOptimizationProfile,
        "ITimingCache": ITimingCache,
    }.items():
        setattr(trt, name, value)
    return trt


def read_plan(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    assert data.startswith(MAGIC)
    body: dict[str, Any] = json.loads(data[len(MAGIC) :])
    return body
