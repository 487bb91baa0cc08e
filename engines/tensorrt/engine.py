"""A deserialized TensorRT plan: what it computes on (tensors, profiles) and where (GPUs).

An ICudaEngine belongs to the device that was current when it was deserialized, so the plan is
deserialized once per GPU it has instances on. Tensors and optimization profiles are read from
the first; the plan is the same on every GPU.

A plan that cannot be deserialized (corrupt, built by another TensorRT version, built for another
GPU) is refused with TensorRT's own logged reason; the repository records it and serves the
other models. So are plans Ferry cannot feed: shape tensors (host memory), vectorized formats,
element types the protocol lacks, outputs whose shape depends on the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ferry.common.errors import ModelLoadError
from ferry.engines.base import Device, Profile, ShapeRange, TensorSpec
from ferry.engines.cuda.toolkit import CudaToolkit
from ferry.engines.tensorrt.instance import TensorRTInstance
from ferry.engines.tensorrt.options import TensorRTOptions
from ferry.engines.tensorrt.runtime import ErrorLog, datatype, import_tensorrt, member_name


class TensorRTEngine:
    def __init__(
        self,
        path: Path,
        devices: Sequence[int],
        options: TensorRTOptions | None = None,
        *,
        trt: Any = None,
        cuda: CudaToolkit | None = None,
    ) -> None:
        """`trt` and `cuda` default to the real libraries; the unit tests hand in doubles."""
        if not devices:
            raise ModelLoadError(f"{path}: a TensorRT plan runs only on a GPU, and none is usable")
        if cuda is None:
            from ferry.engines.cuda import toolkit

            cuda = toolkit.real()
        self._trt = trt if trt is not None else import_tensorrt()
        self._cuda = cuda
        self.path = path
        self.options = options or TensorRTOptions()
        self.errors = ErrorLog.of(self._trt)
        self._plan = path.read_bytes()
        self._runtimes: dict[int, Any] = {}
        self._engines: dict[int, Any] = {}
        first = self.engine_on(devices[0])
        where = str(path)
        self._inputs, self._outputs = _signature(self._trt, first, where)
        self._batch_major = all(s.dims and s.dims[0] == -1 for s in (*self._inputs, *self._outputs))
        self._count = int(first.num_optimization_profiles)

    @property
    def version(self) -> str:
        return str(getattr(self._trt, "__version__", "unknown"))

    def engine_on(self, device: int) -> Any:
        """The plan deserialized on `device` (once per device)."""
        if device in self._engines:
            return self._engines[device]
        self._cuda.use_device(device)
        runtime = self._runtimes.get(device)
        if runtime is None:
            runtime = self._trt.Runtime(self.errors.logger)
            self._runtimes[device] = runtime
        self.errors.take()
        try:
            engine = runtime.deserialize_cuda_engine(self._plan)
        except Exception as exc:  # TensorRT's bindings raise their own types
            raise ModelLoadError(
                f"{self.path}: TensorRT {self.version} cannot deserialize this plan: {exc}"
            ) from exc
        if engine is None:
            reason = self.errors.take() or "TensorRT gave no reason"
            raise ModelLoadError(
                f"{self.path}: TensorRT {self.version} cannot deserialize this plan: {reason}. "
                "A plan runs only on the TensorRT version and GPU model it was built with "
                "(a version-compatible plan also on later runtimes); rebuild it for this host"
            )
        self._engines[device] = engine
        return engine

    @property
    def inputs(self) -> Sequence[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> Sequence[TensorSpec]:
        return self._outputs

    @property
    def batch_major(self) -> bool:
        """Every I/O tensor's first dim is dynamic: the plan can take any row count."""
        return self._batch_major

    @property
    def profiles(self) -> Sequence[Profile]:
        return self.profiles_for(self._batch_major)

    def profiles_for(self, batched: bool) -> tuple[Profile, ...]:
        """The plan's optimization profiles. For a batched model the first dim is the batch:
        the ranges cover the other dims and `max_rows` is the profile's largest batch."""
        engine = self._engines[min(self._engines)]
        where = str(self.path)
        found = []
        for index in range(self._count):
            ranges: dict[str, ShapeRange] = {}
            max_rows = 0
            for spec in self._inputs:
                low, opt, high = (
                    tuple(int(d) for d in dims)
                    for dims in engine.get_tensor_profile_shape(spec.name, index)
                )
                if batched:
                    if low[0] > 1:
                        raise ModelLoadError(
                            f"{where}: profile {index} needs at least {low[0]} rows of input "
                            f"'{spec.name}' per batch; Ferry's batches may hold a single row"
                        )
                    max_rows = high[0] if not max_rows else min(max_rows, high[0])
                    low, opt, high = low[1:], opt[1:], high[1:]
                ranges[spec.name] = ShapeRange(low, opt, high)
            found.append(Profile(index, ranges, max_rows))
        return tuple(found)

    def create_instance(self, name: str, device: Device, profile: Profile) -> TensorRTInstance:
        if device.kind != "gpu":
            raise ModelLoadError(f"instance {name}: a TensorRT plan runs only on a GPU")
        return TensorRTInstance(
            name,
            self._inputs,
            self._outputs,
            self.options,
            self.errors,
            self.engine_on(device.index),
            self._cuda,
            device,
            profile,
        )

    def close(self) -> None:
        self._engines.clear()
        self._runtimes.clear()


def _signature(trt: Any, engine: Any, where: str) -> tuple[tuple[TensorSpec, ...], ...]:
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    for i in range(int(engine.num_io_tensors)):
        name = engine.get_tensor_name(i)
        mode = member_name(engine.get_tensor_mode(name))
        if member_name(engine.get_tensor_location(name)) != "DEVICE":
            raise ModelLoadError(
                f"{where}: tensor '{name}' lives in host memory (a shape tensor); "
                "Ferry feeds device tensors only"
            )
        if int(engine.get_tensor_vectorized_dim(name)) != -1:
            raise ModelLoadError(
                f"{where}: tensor '{name}' has a vectorized format "
                f"({engine.get_tensor_format_desc(name)}); Ferry feeds row-major linear tensors"
            )
        spec = TensorSpec(
            name,
            datatype(engine.get_tensor_dtype(name), name, where),
            tuple(int(d) for d in engine.get_tensor_shape(name)),
        )
        if mode == "INPUT":
            inputs.append(spec)
        elif mode == "OUTPUT":
            outputs.append(spec)
    if not inputs or not outputs:
        raise ModelLoadError(f"{where}: the plan has no inputs or no outputs")
    return tuple(inputs), tuple(outputs)
