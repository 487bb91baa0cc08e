"""A double of NVML's Python bindings (`pynvml`, from nvidia-ml-py) describing a host with MIG
on: the lent GPU machines have MIG off and their settings must not be changed, so the MIG paths
of discovery and metrics are tested against this. Names and call shapes follow pynvml:
handles are opaque, memory info has `.used` and `.total`, MIG mode is `(current, pending)`,
utilization raises NVMLError on a GPU in MIG mode (as NVML does), and an empty MIG slot raises
NVMLError too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

NVML_DEVICE_MIG_ENABLE = 1
NVML_DEVICE_MIG_DISABLE = 0


class NVMLError(Exception):
    pass


@dataclass
class Device:
    uuid: str
    name: str
    total: int
    used: int
    utilization: int | None = 0  # percent; None: NVML refuses (MIG mode)
    migs: list[Device | None] = field(default_factory=list)  # None: an empty slot
    mig_capable: bool = True


class FakeNvml:
    NVMLError = NVMLError
    NVML_DEVICE_MIG_ENABLE = NVML_DEVICE_MIG_ENABLE

    def __init__(self, gpus: list[Device]) -> None:
        self._gpus = gpus

    def nvmlInit(self) -> None:
        return None

    def nvmlDeviceGetCount(self) -> int:
        return len(self._gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Device:
        return self._gpus[index]

    def nvmlDeviceGetUUID(self, handle: Device) -> bytes:
        return handle.uuid.encode()  # older pynvml returns bytes: Ferry decodes both

    def nvmlDeviceGetName(self, handle: Device) -> str:
        return handle.name

    def nvmlDeviceGetMemoryInfo(self, handle: Device) -> Any:
        return SimpleNamespace(
            total=handle.total, used=handle.used, free=handle.total - handle.used
        )

    def nvmlDeviceGetUtilizationRates(self, handle: Device) -> Any:
        if handle.utilization is None:
            raise NVMLError("Not Supported")
        return SimpleNamespace(gpu=handle.utilization, memory=0)

    def nvmlDeviceGetMigMode(self, handle: Device) -> tuple[int, int]:
        if not handle.mig_capable:
            raise NVMLError("Not Supported")
        mode = NVML_DEVICE_MIG_ENABLE if handle.migs else NVML_DEVICE_MIG_DISABLE
        return mode, mode

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Device) -> int:
        return len(handle.migs)

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Device, index: int) -> Device:
        mig = handle.migs[index]
        if mig is None:
            raise NVMLError("Not Found")
        return mig


def mig_host() -> FakeNvml:
    """GPU 0 whole (40% busy); GPU 1 split into two MIG instances with an empty slot between."""
    whole = Device("GPU-aaaa", "NVIDIA H200", 140 << 30, 10 << 30, utilization=40)
    first = Device("MIG-1111", "NVIDIA H200 MIG 3g.71gb", 70 << 30, 2 << 30)
    second = Device("MIG-2222", "NVIDIA H200 MIG 3g.71gb", 70 << 30, 5 << 30)
    split = Device(
        "GPU-bbbb", "NVIDIA H200", 140 << 30, 7 << 30, utilization=None, migs=[first, None, second]
    )
    return FakeNvml([whole, split])
