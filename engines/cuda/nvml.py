"""NVML access (the `nvidia-ml-py` package, imported as `pynvml`), optional.

`start()` returns the initialized module, or None and the reason it is unavailable (bindings
not installed, no driver): callers report the reason and carry on without a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def start() -> tuple[Any, str]:
    try:
        import pynvml
    except ImportError:
        return None, "NVML bindings (nvidia-ml-py) are not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return None, f"NVML cannot start: {exc}"
    return pynvml, ""


def mig_devices(nvml: Any, handle: Any) -> Iterator[Any]:
    """Handles of the MIG instances of a GPU (none when MIG is off or unsupported)."""
    try:
        current, _ = nvml.nvmlDeviceGetMigMode(handle)
    except nvml.NVMLError:  # a GPU without MIG support
        return
    if current != nvml.NVML_DEVICE_MIG_ENABLE:
        return
    for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            yield nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except nvml.NVMLError:  # an empty slot
            continue


def text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
