"""`onnxruntime_onnx` models: one ONNX file, served on the CPU (engines/onnxruntime.py) or on
ONNX Runtime's CUDA execution provider (engines/onnxruntime_cuda.py), per instance group kind.

What a backend decides at load lives here: how many threads each CPU instance gets, what an
instance reserved for the highest priority gets, and when the GPU engine is opened.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ferry.common.cpus import usable_cpus
from ferry.common.digests import sha256_of
from ferry.common.errors import ModelLoadError
from ferry.engines.base import Engine, Instance
from ferry.engines.loading import (
    Artifact,
    GpuLookup,
    Loaded,
    Planner,
    VersionFiles,
    in_background,
)
from ferry.engines.onnxruntime import (
    RESERVED_INLINE_BUDGET_NS,
    OnnxRuntimeEngine,
    options_from_parameters,
)


class OnnxRuntimeLoader:
    """`onnxruntime_onnx` models: CPU instances on OnnxRuntimeEngine, GPU instances (KIND_GPU)
    on ONNX Runtime's CUDA execution provider (engines/onnxruntime_cuda.py)."""

    platform = "onnxruntime_onnx"
    backend = "onnxruntime"
    filename = "model.onnx"
    utf8_bytes = True

    async def load(self, files: VersionFiles, plan: Planner, gpus: GpuLookup) -> Loaded:
        parameters = dict(files.parameters)
        chosen_threads = "intra_op_thread_count" in parameters
        if not chosen_threads:
            parameters["intra_op_thread_count"] = str(shared_threads(files))
        options = replace(
            options_from_parameters(parameters),
            in_flight=files.in_flight,
            cuda_graphs=files.cuda_graphs,
        )
        digest = await in_background(sha256_of, files.path)
        engine = await in_background(OnnxRuntimeEngine, files.path, options)
        loaded = Loaded([engine], [], digest)
        try:
            planned, max_batch_size = await plan(Artifact(engine.inputs, engine.outputs))
            if files.cuda_graphs and any(p.device.kind != "gpu" for p in planned):
                raise ModelLoadError(
                    f"{files.where}: optimization.cuda.graphs needs GPU instances (KIND_GPU); "
                    "this model has CPU instances"
                )
            reserving = any(p.reserved for p in planned)
            gpu_engine: Engine | None = None
            make: Callable[[], Instance]
            for i, wanted in enumerate(planned):
                name = f"{files.model}_{files.version}_{i}"
                if wanted.device.kind == "gpu":
                    if gpu_engine is None:
                        from ferry.engines.onnxruntime_cuda import OnnxRuntimeCudaEngine

                        gpu_engine = await asyncio.to_thread(
                            OnnxRuntimeCudaEngine, files.path, options, max_batch_size
                        )
                        loaded.engines.append(gpu_engine)
                    make = functools.partial(
                        gpu_engine.create_instance, name, wanted.device, wanted.profile
                    )
                else:
                    make = functools.partial(
                        engine.create_instance,
                        name,
                        wanted.device,
                        wanted.profile,
                        **_cpu_placement(wanted.reserved, reserving, chosen_threads),
                    )
                # CPU instances open their sessions on the loading thread (engines/onnxruntime.py)
                opened = (
                    in_background(make) if wanted.device.kind == "cpu" else asyncio.to_thread(make)
                )
                loaded.instances.append(await opened)
        except BaseException:
            await loaded.close()
            raise
        return loaded


def shared_threads(files: VersionFiles) -> int:
    """Intra-op threads per instance when the config does not say: the instances share the
    cores this process may use (its affinity, not the host's) instead of each starting a thread
    per core. With a reservation, the unreserved instances share every core but one: that core
    is left to the event loop, gRPC and the reserved instances (one thread each), so that
    high-priority requests never queue for a CPU behind background compute (bench/scheduling.py
    measures the isolation)."""
    general = max(1, files.instance_count - files.reserved)
    cores = usable_cpus() - (1 if files.reserved else 0)
    return max(1, cores // general)


def _cpu_placement(reserved: bool, reserving: bool, chosen_threads: bool) -> dict[str, Any]:
    """A reserved CPU instance runs small high-priority batches: on one thread it never waits
    for a straggler among threads the busy instances crowd out; at the event loop's OS priority,
    and on the loop itself when a batch is cheap enough, it is not crowded out by the unreserved
    instances, whose threads run in the idle scheduling class."""
    if reserved:
        placement: dict[str, Any] = {"nice": 0, "inline_budget_ns": RESERVED_INLINE_BUDGET_NS}
        if not chosen_threads:
            placement["threads"] = 1
        return placement
    return {"idle_class": True} if reserving else {}
