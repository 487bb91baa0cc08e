"""The TensorRT target: an ONNX file (already converted to the precision asked: FP16 casts or
INT8 Q/DQ, since TensorRT 11 networks are strongly typed and take their precision from the
graph) parsed and built into a plan, with optimization profiles, a timing cache reused across
builds, the builder optimization level, and the version-compatible and lean-runtime options.

TensorRT is imported here only: a machine without it (every CI machine) is told where the
build runs. Tests hand in a double of the builder API (tests/doubles/tensorrt_builder.py).
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.common.errors import BuildError

Shape = tuple[int, ...]
ProfileShapes = Mapping[str, tuple[Shape, Shape, Shape]]  # input -> (min, opt, max), rows first

NO_BUILDER = (
    "--target tensorrt needs the TensorRT builder (the `tensorrt` Python package with a GPU "
    "and its driver), which this machine lacks; run ferry build where TensorRT runs, e.g. in "
    "NVIDIA's TensorRT container (nvcr.io/nvidia/tensorrt)"
)


@dataclass(frozen=True)
class PlanOptions:
    optimization_level: int = 3  # TensorRT's default; 0..5
    timing_cache: Path | None = None  # read if present, written after the build
    version_compatible: bool = False  # runs on later TensorRT versions of the same major
    exclude_lean_runtime: bool = False  # with version_compatible: the lean runtime ships apart


def tensorrt() -> types.ModuleType:
    """The full TensorRT module: the builder is not in the lean or dispatch runtimes."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        raise BuildError(NO_BUILDER) from exc


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    profiles: Sequence[ProfileShapes],
    options: PlanOptions,
    trt: types.ModuleType | None = None,
) -> dict[str, Any]:
    """Write the plan; returns what the manifest records of the build."""
    trt = trt or tensorrt()
    if options.exclude_lean_runtime and not options.version_compatible:
        raise BuildError("--exclude-lean-runtime needs --version-compatible")
    if not 0 <= options.optimization_level <= 5:
        raise BuildError(f"--optimization-level must be in 0..5, got {options.optimization_level}")
    logger = _collecting_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        raise BuildError(f"TensorRT's ONNX parser refused {onnx_path}: {'; '.join(errors)}")
    inputs = {
        network.get_input(i).name: tuple(network.get_input(i).shape)
        for i in range(network.num_inputs)
    }
    config = builder.create_builder_config()
    config.builder_optimization_level = options.optimization_level
    for index, shapes in enumerate(profiles):
        profile = builder.create_optimization_profile()
        for name, (low, best, high) in _checked(index, shapes, inputs).items():
            profile.set_shape(name, low, best, high)
        config.add_optimization_profile(profile)
    cache_bytes = b""
    if options.timing_cache is not None and options.timing_cache.is_file():
        cache_bytes = options.timing_cache.read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, False):
        raise BuildError(
            f"{options.timing_cache}: TensorRT cannot use this timing cache (another TensorRT "
            f"version or GPU made it): {logger.said()}"
        )
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if options.exclude_lean_runtime:
        config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(f"TensorRT could not build {onnx_path}: {logger.said()}")
    plan_path.write_bytes(bytes(serialized))
    if options.timing_cache is not None:
        options.timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {
        "tensorrt": str(trt.__version__),
        "profiles": [
            {name: [list(s) for s in shapes] for name, shapes in profile.items()}
            for profile in profiles
        ],
        "optimization_level": options.optimization_level,
        "timing_cache": None if options.timing_cache is None else str(options.timing_cache),
        "timing_cache_reused": bool(cache_bytes),
        "version_compatible": options.version_compatible,
        "exclude_lean_runtime": options.exclude_lean_runtime,
    }


def _checked(index: int, shapes: ProfileShapes, inputs: Mapping[str, Shape]) -> ProfileShapes:
    """Every input of the network once, each bound with the input's rank, min <= opt <= max,
    and every fixed dimension kept."""
    where = f"profile {index}"
    if unknown := sorted(shapes.keys() - inputs.keys()):
        raise BuildError(f"{where} names {unknown}, not inputs of the model ({sorted(inputs)})")
    if missing := sorted(inputs.keys() - shapes.keys()):
        raise BuildError(f"{where} gives no shapes for input(s) {missing}")
    for name, (low, best, high) in shapes.items():
        dims = inputs[name]
        if not len(low) == len(best) == len(high) == len(dims):
            raise BuildError(
                f"{where}: input {name} has {len(dims)} dims {list(dims)}; the "
                f"profile gives {list(low)}, {list(best)}, {list(high)}"
            )
        for axis, dim in enumerate(dims):
            if not 1 <= low[axis] <= best[axis] <= high[axis]:
                raise BuildError(
                    f"{where}: input {name} dim {axis}: needs 1 <= min <= opt <= "
                    f"max, got {low[axis]}, {best[axis]}, {high[axis]}"
                )
            if dim >= 0 and not low[axis] == high[axis] == dim:
                raise BuildError(
                    f"{where}: input {name} dim {axis} is fixed at {dim} in the "
                    f"model; the profile gives {low[axis]}..{high[axis]}"
                )
    return shapes


def _collecting_logger(trt: types.ModuleType) -> Any:
    """A TensorRT logger that keeps warnings and errors, to say why a build failed."""

    class Collecting(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity <= trt.ILogger.Severity.WARNING:
                self.messages.append(msg)

        def said(self) -> str:
            return "; ".join(self.messages[-5:]) or "no message from TensorRT"

    return Collecting()


def profile_shapes(
    text: str, inputs: Mapping[str, Sequence[int | None]], max_rows: int, opt_rows: int
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """One profile from `--profile` (Ferry's `ferry.profile.<N>` syntax: per input
    `name:min..max` or `name:min..opt..max` over the dims after the rows, joined by "x"), rows
    1..`max_rows` (opt `opt_rows`); an input it does not name must have fixed dims."""
    given: dict[str, tuple[Shape, Shape, Shape]] = {}
    for item in text.split():
        name, sep, bounds = item.partition(":")
        if not sep or name not in inputs:
            raise BuildError(
                f"--profile '{item}' must be <input>:<min>..<max> with an input "
                f"of the model ({', '.join(inputs)})"
            )
        try:
            parts = [tuple(int(d) for d in part.split("x")) for part in bounds.split("..")]
        except ValueError:
            raise BuildError(f"--profile '{item}': dims must be integers joined by x") from None
        if len(parts) == 2:
            parts.insert(1, parts[1])
        if len(parts) != 3:
            raise BuildError(f"--profile '{item}': give min..max or min..opt..max")
        low, best, high = parts
        given[name] = ((1, *low), (opt_rows, *best), (max_rows, *high))
    for name, dims in inputs.items():
        if name in given:
            continue
        if any(d is None for d in dims):
            raise BuildError(
                f"--profile gives no range for input {name}, whose dims "
                f"{['-1' if d is None else d for d in dims]} vary"
            )
        fixed = tuple(int(d) for d in dims if d is not None)
        given[name] = ((1, *fixed), (opt_rows, *fixed), (max_rows, *fixed))
    return given
