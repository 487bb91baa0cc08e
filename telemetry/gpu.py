"""GPU memory and utilization from NVML, per GPU and per MIG instance, for /metrics.

NVML (the `nvidia-ml-py` package, imported as `pynvml`) is optional: without it, or without a
driver, the collector says why once in the log and yields nothing, and everything else serves.

    ferry_gpu_memory_used_bytes{gpu, name, mig}    ferry_gpu_memory_total_bytes{gpu, name, mig}
    ferry_gpu_utilization_ratio{gpu, name}         (0..1; NVML reports none per MIG instance)

`gpu` is the GPU's UUID and `mig` the MIG instance's UUID ("" for the whole GPU), the identifiers
CUDA_VISIBLE_DEVICES takes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("ferry.telemetry")


def _nvml() -> tuple[Any, str]:
    """The initialized pynvml module, or None and the reason it is unavailable."""
    try:
        import pynvml
    except ImportError:
        return None, "NVML bindings (nvidia-ml-py) are not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return None, f"NVML cannot start: {exc}"
    return pynvml, ""


class GpuCollector(Collector):
    def __init__(self) -> None:
        self._nvml, reason = _nvml()
        if self._nvml is None:
            log.info("no GPU metrics: %s", reason)

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def collect(self) -> Iterator[Metric]:
        nvml = self._nvml
        if nvml is None:
            return
        labels = ["gpu", "name", "mig"]
        used = GaugeMetricFamily("ferry_gpu_memory_used_bytes", "GPU memory in use", labels=labels)
        total = GaugeMetricFamily("ferry_gpu_memory_total_bytes", "GPU memory", labels=labels)
        busy = GaugeMetricFamily(
            "ferry_gpu_utilization_ratio", "Share of time a kernel ran", labels=["gpu", "name"]
        )
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            name = _text(nvml.nvmlDeviceGetName(handle))
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            used.add_metric([uuid, name, ""], float(memory.used))
            total.add_metric([uuid, name, ""], float(memory.total))
            try:
                busy.add_metric([uuid, name], nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100)
            except nvml.NVMLError:  # not reported while MIG is on
                pass
            for mig in _mig_devices(nvml, handle):
                mig_memory = nvml.nvmlDeviceGetMemoryInfo(mig)
                mig_uuid = _text(nvml.nvmlDeviceGetUUID(mig))
                used.add_metric([uuid, name, mig_uuid], float(mig_memory.used))
                total.add_metric([uuid, name, mig_uuid], float(mig_memory.total))
        yield used
        yield total
        yield busy


def _mig_devices(nvml: Any, handle: Any) -> Iterator[Any]:
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


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
