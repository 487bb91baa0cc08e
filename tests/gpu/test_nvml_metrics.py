"""GPU metrics from NVML on a real GPU (marker `gpu`; skipped where NVML finds none)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ferry.telemetry.gpu import GpuCollector

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpus() -> GpuCollector:
    collector = GpuCollector()
    if not collector.available:
        pytest.skip("no GPU: NVML is unavailable here")
    return collector


def test_every_gpu_reports_memory_and_utilization(gpus: GpuCollector) -> None:
    families = {f.name: f for f in gpus.collect()}
    totals = families["ferry_gpu_memory_total_bytes"].samples
    used = {
        tuple(sorted(s.labels.items())): s.value
        for s in families["ferry_gpu_memory_used_bytes"].samples
    }
    assert totals, "no GPU listed"
    for sample in totals:
        assert sample.labels["gpu"].startswith(("GPU-", "MIG-"))
        assert sample.value > 1 << 30  # more than 1 GiB: a real device
        assert 0 <= used[tuple(sorted(sample.labels.items()))] <= sample.value
    for sample in families["ferry_gpu_utilization_ratio"].samples:
        assert 0.0 <= sample.value <= 1.0


def test_gpu_metrics_appear_in_the_exposition(gpus: GpuCollector) -> None:
    registry = CollectorRegistry()
    registry.register(gpus)
    text = generate_latest(registry).decode()
    assert "ferry_gpu_memory_total_bytes{" in text
