"""Which GPUs and MIG instances this host has, by UUID, with their memory.

NVML lists every GPU and, where MIG is on, every MIG instance; each is a device Ferry can place
instances on (a CUDA process sees one MIG instance at a time, so placement starts one worker per
device, selected by its UUID in CUDA_VISIBLE_DEVICES). cuda-python's runtime is asked too: a
host whose NVML sees GPUs but whose CUDA cannot use them (driver too old for the CUDA runtime,
say) is reported as having no usable GPU, with the reason, instead of failing later.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from common.errors import CudaError
from engines.cuda import nvml as nvml_access

log = logging.getLogger("ferry.engines")


@dataclass(frozen=True)
class GpuDevice:
    """A GPU, or a MIG instance of one (then `parent` is the GPU's UUID)."""

    uuid: str
    name: str
    memory_bytes: int
    index: int  # NVML index of the GPU (of the parent GPU for a MIG instance)
    parent: str = ""

    @property
    def is_mig(self) -> bool:
        return bool(self.parent)


@dataclass(frozen=True)
class Discovery:
    """What was found; `reason` says why `devices` is empty when it is."""

    devices: tuple[GpuDevice, ...] = ()
    cuda_devices: int = 0
    reason: str = ""
    problems: tuple[str, ...] = field(default_factory=tuple)


def discover() -> Discovery:
    """Enumerate GPUs and MIG instances; never raises. Logs one line saying what it found."""
    nvml, reason = nvml_access.start()
    if nvml is None:
        found = Discovery(reason=reason)
    else:
        found = _with_nvml(nvml)
    if found.devices:
        log.info(
            "GPUs: %s",
            ", ".join(
                f"{d.name} {d.uuid} ({d.memory_bytes / 2**30:.0f} GiB)" for d in found.devices
            ),
        )
    else:
        log.info("no GPU: %s; CPU backends only", found.reason)
    return found


def _with_nvml(api: Any) -> Discovery:
    devices: list[GpuDevice] = []
    for index in range(api.nvmlDeviceGetCount()):
        handle = api.nvmlDeviceGetHandleByIndex(index)
        gpu_uuid = nvml_access.text(api.nvmlDeviceGetUUID(handle))
        name = nvml_access.text(api.nvmlDeviceGetName(handle))
        migs = list(nvml_access.mig_devices(api, handle))
        if not migs:
            memory = api.nvmlDeviceGetMemoryInfo(handle).total
            devices.append(GpuDevice(gpu_uuid, name, int(memory), index))
        for mig in migs:
            devices.append(
                GpuDevice(
                    nvml_access.text(api.nvmlDeviceGetUUID(mig)),
                    f"{name} MIG",
                    int(api.nvmlDeviceGetMemoryInfo(mig).total),
                    index,
                    gpu_uuid,
                )
            )
    if not devices:
        return Discovery(reason="NVML lists no GPU")
    count, problem = cuda_device_count()
    if problem:
        return Discovery(
            cuda_devices=0, reason=f"NVML lists GPUs but CUDA cannot use them: {problem}"
        )
    return Discovery(tuple(devices), count)


def cuda_device_count() -> tuple[int, str]:
    """CUDA's own device count, and a problem description when CUDA is unusable."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        return 0, "cuda-python is not installed"
    error, count = runtime.cudaGetDeviceCount()
    if error != runtime.cudaError_t.cudaSuccess:
        return 0, error_name(error)
    return int(count), ""


def error_name(error: object) -> str:
    """`cudaErrorX: description` for a cuda-python runtime error code."""
    from cuda.bindings import runtime

    _, name = runtime.cudaGetErrorName(error)
    _, text = runtime.cudaGetErrorString(error)
    return f"{nvml_access.text(name)}: {nvml_access.text(text)}"


def check(result: Any, call: str) -> Any:
    """Unpack a cuda-python runtime call's `(error, *values)`; raise CudaError naming the error.

    Every CUDA call in Ferry goes through here, so a failure always says which call failed and
    which CUDA error it was (`cudaErrorInvalidDevice: invalid device ordinal`).
    """
    from cuda.bindings import runtime

    error, *values = result if isinstance(result, tuple) else (result,)
    if error != runtime.cudaError_t.cudaSuccess:
        raise CudaError(f"{call} failed: {error_name(error)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)
