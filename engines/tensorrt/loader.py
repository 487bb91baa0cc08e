"""`tensorrt_plan` models: find the GPUs first (TensorRT must never start without one), then
deserialize the plan on the first of them, then make each instance on its profile and GPU."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ferry.common.digests import sha256_of
from ferry.common.errors import ModelLoadError
from ferry.engines.cuda import toolkit
from ferry.engines.cuda.toolkit import CudaToolkit
from ferry.engines.loading import Artifact, GpuLookup, Loaded, Planner, VersionFiles
from ferry.engines.tensorrt.engine import TensorRTEngine
from ferry.engines.tensorrt.options import TensorRTOptions
from ferry.engines.tensorrt.runtime import import_tensorrt


class TensorRTLoader:
    """`tensorrt` and `cuda` make the TensorRT module and the CUDA toolkit: the real ones by
    default; CI, which has neither a GPU nor TensorRT, hands in doubles (tests/doubles/)."""

    platform = "tensorrt_plan"
    backend = "tensorrt"
    filename = "model.plan"
    utf8_bytes = False

    def __init__(
        self,
        tensorrt: Callable[[], Any] = import_tensorrt,
        cuda: Callable[[], CudaToolkit] = toolkit.real,
    ) -> None:
        self._tensorrt = tensorrt
        self._cuda = cuda

    async def load(self, files: VersionFiles, plan: Planner, gpus: GpuLookup) -> Loaded:
        found = await gpus()
        ordinals = sorted(d.ordinal for d in found.devices if d.ordinal >= 0)
        if not ordinals:
            raise ModelLoadError(
                f"{files.path}: a TensorRT plan needs a GPU, and this process has none usable: "
                f"{found.reason or 'MIG instances need --workers gpu'}"
            )
        options = TensorRTOptions(cuda_graphs=files.cuda_graphs, in_flight=files.in_flight)
        digest = await asyncio.to_thread(sha256_of, files.path)
        engine = await asyncio.to_thread(
            TensorRTEngine,
            files.path,
            ordinals,
            options,
            trt=await asyncio.to_thread(self._tensorrt),
            cuda=self._cuda(),
        )
        loaded = Loaded([engine], [], digest)
        try:
            implied = 0
            if engine.batch_major:
                implied = max((p.max_rows for p in engine.profiles_for(True)), default=0)
            planned, _ = await plan(
                Artifact(
                    engine.inputs,
                    engine.outputs,
                    own_profiles=engine.profiles_for,
                    implied_max_batch_size=implied,
                    gpu_only=True,
                )
            )
            for i, wanted in enumerate(planned):
                loaded.instances.append(
                    await asyncio.to_thread(
                        engine.create_instance,
                        f"{files.model}_{files.version}_{i}",
                        wanted.device,
                        wanted.profile,
                    )
                )
        except BaseException:
            await loaded.close()
            raise
        return loaded
