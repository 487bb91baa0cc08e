"""Model inputs for calibration and for the accuracy gate: read from `.npz` files (one array per
input, rows first) or from the directory `ferry serve --capture` fills with them, checked
against the model's inputs, and split so that the gate judges on rows calibration never saw."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ferry.common.datatypes import DATATYPES, ONNX_TYPES
from ferry.common.errors import BuildError

SAMPLED = ("BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64")
"""Datatypes the build can read from .npz files and make up: not strings, not BF16 (numpy has
no such type)."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    dims: tuple[int | None, ...]  # after the row dimension; None: any size


def model_inputs(path: Path) -> list[InputSpec]:
    """The inputs of an ONNX file, the first dimension taken as rows."""
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's own exception types
        raise BuildError(f"{path}: onnxruntime cannot load it: {exc}") from exc
    specs = []
    for arg in session.get_inputs():
        name = ONNX_TYPES.get(arg.type, "")
        if name not in SAMPLED:
            raise BuildError(
                f"{path}: input {arg.name} has type {arg.type}, which ferry build cannot sample"
            )
        dims = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape[1:])
        specs.append(InputSpec(arg.name, DATATYPES[name].numpy, dims))
    return specs


@dataclass(frozen=True)
class Samples:
    arrays: Mapping[str, np.ndarray]
    rows: int
    source: str  # where they came from, for the manifest
    index: np.ndarray | None = None  # which rows of the data read, when a part of it

    def take(self, index: np.ndarray) -> Samples:
        arrays = {k: v[index] for k, v in self.arrays.items()}
        return Samples(arrays, len(index), self.source, index)

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.rows, size):
            yield {k: v[start : start + size] for k, v in self.arrays.items()}


def read(path: Path, specs: Sequence[InputSpec]) -> Samples:
    """Every `.npz` at `path` (a file, or a directory searched recursively, in name order),
    joined row-wise per input, and checked against the model's inputs."""
    files = [path] if path.is_file() else sorted(path.rglob("*.npz"))
    if not files:
        raise BuildError(f"{path}: no .npz files of model inputs")
    parts: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
    for file in files:
        try:
            with np.load(file, allow_pickle=False) as data:
                found = {name: data[name] for name in data.files}
        except (OSError, ValueError) as exc:
            raise BuildError(f"{file}: not a readable .npz: {exc}") from exc
        _check(file, found, specs)
        for name in parts:
            parts[name].append(found[name])
    arrays = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    return Samples(arrays, len(next(iter(arrays.values()))), str(path))


def _check(file: Path, found: Mapping[str, np.ndarray], specs: Sequence[InputSpec]) -> None:
    wanted = {s.name for s in specs}
    if missing := sorted(wanted - found.keys()):
        raise BuildError(f"{file}: no array for model input(s) {missing}")
    if extra := sorted(found.keys() - wanted):
        raise BuildError(
            f"{file}: array(s) {extra} are not inputs of the model (its inputs: {sorted(wanted)})"
        )
    rows = {len(found[s.name]) if found[s.name].ndim else -1 for s in specs}
    if len(rows) != 1 or -1 in rows:
        raise BuildError(f"{file}: the inputs do not hold the same number of rows ({rows})")
    for spec in specs:
        array = found[spec.name]
        if array.dtype != spec.dtype:
            raise BuildError(
                f"{file}: input {spec.name} is {array.dtype}; the model takes {spec.dtype}"
            )
        shape = array.shape[1:]
        fits = len(shape) == len(spec.dims) and all(
            d is None or d == s for d, s in zip(spec.dims, shape, strict=True)
        )
        if not fits:
            dims = ["-1" if d is None else str(d) for d in spec.dims]
            raise BuildError(
                f"{file}: input {spec.name} has rows of shape {list(shape)}; the "
                f"model takes [{', '.join(dims)}]"
            )


def synthetic(specs: Sequence[InputSpec], rows: int, seed: int = 0) -> Samples:
    """Stand-in inputs for a build that needs no calibration and was given no data: floats
    from a standard normal, integers in [0, 1000), booleans at random. The manifest says so:
    a gate on such rows checks the arithmetic, not the accuracy on real traffic."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = (rows, *(1 if d is None else d for d in spec.dims))
        if np.issubdtype(spec.dtype, np.floating):
            arrays[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype == np.bool_:
            arrays[spec.name] = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            arrays[spec.name] = rng.integers(0, 1000, shape).astype(spec.dtype)
    return Samples(arrays, rows, "synthetic")


def split(samples: Samples, calibration_rows: int, held_out_rows: int) -> tuple[Samples, Samples]:
    """(calibration, held out): disjoint, from one seeded shuffle. A fifth of the rows, up to
    `held_out_rows`, is held out; calibration takes up to `calibration_rows` of the rest."""
    if samples.rows < 10:
        raise BuildError(
            f"{samples.source}: {samples.rows} rows are too few to calibrate and "
            "check a build (10 or more)"
        )
    order = np.random.default_rng(0).permutation(samples.rows)
    held = min(held_out_rows, max(1, samples.rows // 5))
    return samples.take(order[held : held + calibration_rows]), samples.take(order[:held])
