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

from ferry.engines.cuda import nvml as nvml_access

log = logging.getLogger("ferry.telemetry")


class GpuCollector(Collector):
    def __init__(self, nvml: Any = None) -> None:
        """`nvml`: an initialized NVML module (tests hand in a double); default: pynvml."""
        self._nvml, reason = (nvml, "") if nvml is not None else nvml_access.start()
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
            uuid = nvml_access.text(nvml.nvmlDeviceGetUUID(handle))
            name = nvml_access.text(nvml.nvmlDeviceGetName(handle))
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            used.add_metric([uuid, name, ""], float(memory.used))
            total.add_metric([uuid, name, ""], float(memory.total))
            try:
                busy.add_metric([uuid, name], nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100)
            except nvml.NVMLError:  # not reported while MIG is on
                pass
            for mig in nvml_access.mig_devices(nvml, handle):
                mig_memory = nvml.nvmlDeviceGetMemoryInfo(mig)
                mig_uuid = nvml_access.text(nvml.nvmlDeviceGetUUID(mig))
                used.add_metric([uuid, name, mig_uuid], float(mig_memory.used))
                total.add_metric([uuid, name, mig_uuid], float(mig_memory.total))
        yield used
        yield total
        yield busy
