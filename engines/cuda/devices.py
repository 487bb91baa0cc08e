"""Which GPUs and MIG instances this host has, by UUID, with their memory.

NVML lists every GPU and, where MIG is on, every MIG instance; each is a device Ferry can place
instances on (a CUDA process sees one MIG instance at a time, so placement starts one worker per
device, selected by its UUID in CUDA_VISIBLE_DEVICES). cuda-python's runtime is asked too: a
host whose NVML sees GPUs but whose CUDA cannot use them (driver too old for the CUDA runtime,
say) is reported as having no usable GPU, with the reason, instead of failing later.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ferry.common.errors import CudaError
from ferry.engines.cuda import nvml as nvml_access

log = logging.getLogger("ferry.engines")


@dataclass(frozen=True)
class GpuDevice:
    """A GPU, or a MIG instance of one (then `parent` is the GPU's UUID)."""

    uuid: str
    name: str
    memory_bytes: int
    index: int  # NVML index of the GPU (of the parent GPU for a MIG instance)
    parent: str = ""
    ordinal: int = -1  # CUDA's device number in this process; -1: not visible to CUDA here

    @property
    def is_mig(self) -> bool:
        return bool(self.parent)


@dataclass(frozen=True)
class Discovery:
    """What was found; `reason` says why `devices` is empty when it is."""

    devices: tuple[GpuDevice, ...] = ()
    cuda_devices: int = 0
    reason: str = ""


def discover(environ: Mapping[str, str] | None = None, nvml: Any = None) -> Discovery:
    """Enumerate GPUs and MIG instances; never raises. Logs one line saying what it found.

    NVML lists every device of the host; CUDA in this process sees those CUDA_VISIBLE_DEVICES
    names (by UUID or NVML index), numbered from 0 in that order. Only those are returned, each
    with its CUDA `ordinal`, so a worker started for one device sees exactly that device.
    """
    reason = ""
    if nvml is None:  # tests hand in a double of NVML
        nvml, reason = nvml_access.start()
    if nvml is None:
        found = Discovery(reason=reason)
    else:
        found = visible(_with_nvml(nvml), os.environ if environ is None else environ)
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


def visible(found: Discovery, environ: Mapping[str, str]) -> Discovery:
    """The devices CUDA_VISIBLE_DEVICES leaves to this process, with their CUDA ordinals."""
    if not found.devices:
        return found
    wanted = environ.get("CUDA_VISIBLE_DEVICES")
    if wanted is None:  # CUDA numbers the GPUs as NVML does; MIG instances need selecting
        chosen = [replace(d, ordinal=d.index) for d in found.devices if not d.is_mig]
        chosen += [d for d in found.devices if d.is_mig]
        return replace(found, devices=tuple(chosen))
    picked: list[GpuDevice] = []
    for ordinal, name in enumerate(n.strip() for n in wanted.split(",") if n.strip()):
        match = [
            d
            for d in found.devices
            if d.uuid == name or (name.isdigit() and not d.is_mig and d.index == int(name))
        ]
        if not match:
            break  # CUDA stops at the first name it cannot resolve
        picked.append(replace(match[0], ordinal=ordinal))
    if not picked:
        return Discovery(reason=f"CUDA_VISIBLE_DEVICES={wanted!r} names no device of this host")
    return replace(found, devices=tuple(picked))


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
