"""Warm-up: the config's `model_warmup` requests, run on every instance of a version before it
serves, so that its first real requests do not pay for lazy initialisation (memory arenas,
kernel selection, CUDA graphs). A version becomes READY, and takes traffic, only after it.

Each entry names a batch size, a count and every input's data: zeros, random values, or a file
under the model folder's `warmup/` (raw bytes, as binary tensor data carries them). A wrong
entry, or a run that fails, fails the load with the entry named.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ferry.common.errors import FerryError, ModelLoadError
from ferry.engines.base import Feed, Instance, TensorSpec
from ferry.proto import model_config_pb2 as mc
from ferry.server.codec import Signature, raw_tensor
from ferry.server.model_config import config_datatype

log = logging.getLogger("ferry.repository")

WARMUP_FOLDER = "warmup"


def feeds(
    warmups: list[mc.ModelWarmup], sig: Signature, folder: Path, where: str
) -> list[tuple[str, Feed, int]]:
    """(entry name, the batch to run, how many times) for each entry."""
    out = []
    rng = np.random.default_rng(0)
    for number, warmup in enumerate(warmups):
        name = warmup.name or f"warmup {number}"
        here = f"{where}: model_warmup '{name}'"
        batched = sig.max_batch_size > 0
        rows = warmup.batch_size or 1
        if batched and rows > sig.max_batch_size:
            raise ModelLoadError(
                f"{here}: batch_size {rows} exceeds max_batch_size {sig.max_batch_size}"
            )
        if not batched and rows != 1:
            raise ModelLoadError(f"{here}: a model without batching warms up with batch_size 1")
        missing = [i for i in sig.inputs if i not in warmup.inputs]
        unknown = [i for i in warmup.inputs if i not in sig.inputs]
        if missing or unknown:
            raise ModelLoadError(
                f"{here}: inputs must be the model's ({', '.join(sig.inputs)}); "
                f"missing {missing}, unknown {unknown}"
            )
        arrays = {}
        for input_name, given in warmup.inputs.items():
            spec = sig.inputs[input_name]
            what = f"{here} input '{input_name}'"
            array = _data(given, spec, rows if batched else None, folder, rng, what)
            model_dims = sig.reshape_inputs.get(input_name)
            if model_dims is not None:
                array = array.reshape(((rows,) if batched else ()) + model_dims)
            arrays[input_name] = array
        out.append((name, Feed([arrays], rows), max(1, warmup.count)))
    return out


def _data(
    given: mc.ModelWarmup.Input,
    spec: TensorSpec,
    rows: int | None,
    folder: Path,
    rng: np.random.Generator,
    here: str,
) -> np.ndarray:
    datatype = config_datatype(given.data_type, here)
    if datatype != spec.datatype:
        raise ModelLoadError(
            f"{here}: data_type {datatype.config_name} differs from the input's "
            f"{spec.datatype.config_name}"
        )
    dims = tuple(int(d) for d in given.dims)
    if len(dims) != len(spec.dims) or any(
        d < 1 or (s != -1 and d != s) for d, s in zip(dims, spec.dims, strict=True)
    ):
        raise ModelLoadError(f"{here}: dims {list(dims)} do not fit the input's {list(spec.dims)}")
    shape = ((rows,) if rows is not None else ()) + dims
    kind = given.WhichOneof("input_data_type")
    if kind == "input_data_file":
        name = given.input_data_file
        path = folder / WARMUP_FOLDER / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ModelLoadError(f"{here}: input_data_file must be a file under {WARMUP_FOLDER}/")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"{here}: cannot read {path}: {exc.strerror}") from None
        try:
            return raw_tensor(data, shape, spec)
        except FerryError as exc:
            raise ModelLoadError(f"{here}: {path}: {exc}") from None
    dtype = spec.datatype.numpy
    if spec.datatype.name == "BYTES":
        return np.full(shape, b"0" if kind == "random_data" else b"", dtype=object)
    if kind == "random_data":
        if dtype.kind == "f" or spec.datatype.name == "BF16":
            return rng.random(shape).astype(dtype)
        if dtype.kind == "b":
            return rng.integers(0, 2, shape).astype(dtype)
        return rng.integers(0, 100, shape).astype(dtype)
    if kind != "zero_data":
        raise ModelLoadError(f"{here}: needs zero_data, random_data or input_data_file")
    return np.zeros(shape, dtype=dtype)


async def warm(
    instances: Sequence[Instance], entries: list[tuple[str, Feed, int]], where: str
) -> int:
    """Run every entry on every instance; the number of runs."""
    runs = 0
    for instance in instances:
        for name, feed, count in entries:
            for _ in range(count):
                try:
                    await instance.warm(feed)
                except FerryError as exc:
                    raise ModelLoadError(
                        f"{where}: model_warmup '{name}' failed on {instance.name}: {exc}"
                    ) from None
                runs += 1
    return runs
