"""MIG instances as devices, against a double of NVML describing a host with MIG on (the lent
GPU machines have MIG off, and their settings must not be changed): discovery lists each MIG
instance with its parent and memory, CUDA_VISIBLE_DEVICES selects one, `--workers gpu` starts one
worker per GPU or MIG instance, and /metrics reports memory per MIG instance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ferry.engines.cuda import devices
from ferry.server import cli
from ferry.telemetry.gpu import GpuCollector
from tests.doubles.nvml import mig_host


@pytest.fixture
def cuda_sees_two(monkeypatch: pytest.MonkeyPatch) -> None:
    # CUDA's own count: cuda-python is not installed on this machine.
    monkeypatch.setattr(devices, "cuda_device_count", lambda: (2, ""))


def test_discovery_lists_mig_instances_with_their_parent_and_memory(cuda_sees_two: None) -> None:
    found = devices.discover(environ={}, nvml=mig_host())
    listed = [(d.uuid, d.parent, d.memory_bytes >> 30, d.ordinal) for d in found.devices]
    # The split GPU itself is not a device; its instances are, and need selecting for CUDA.
    assert listed == [
        ("GPU-aaaa", "", 140, 0),
        ("MIG-1111", "GPU-bbbb", 70, -1),
        ("MIG-2222", "GPU-bbbb", 70, -1),
    ]
    chosen = devices.discover(environ={"CUDA_VISIBLE_DEVICES": "MIG-2222"}, nvml=mig_host())
    assert [(d.uuid, d.ordinal, d.is_mig) for d in chosen.devices] == [("MIG-2222", 0, True)]


def test_workers_gpu_starts_one_worker_per_gpu_or_mig_instance(
    cuda_sees_two: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = devices.discover
    monkeypatch.setattr(devices, "discover", lambda: real(environ={}, nvml=mig_host()))
    started: dict[str, Any] = {}

    def supervise(argv: Any, workers: int, host: str, ports: Any, found: Any) -> int:
        started.update(workers=workers, devices=list(found))
        return 0

    import ferry.server.workers

    monkeypatch.setattr(ferry.server.workers, "supervise", supervise)
    args = ["serve", "--model-repository", str(tmp_path), "--workers"]
    assert cli.main([*args, "gpu"]) == 0
    assert started == {"workers": 3, "devices": ["GPU-aaaa", "MIG-1111", "MIG-2222"]}
    assert cli.main([*args, "gpu:2"]) == 0
    assert started["devices"] == ["GPU-aaaa"] * 2 + ["MIG-1111"] * 2 + ["MIG-2222"] * 2


def test_metrics_report_memory_per_mig_instance() -> None:
    registry = CollectorRegistry()
    registry.register(GpuCollector(nvml=mig_host()))
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    used = {
        (s.labels["gpu"], s.labels["mig"]): s.value
        for s in families["ferry_gpu_memory_used_bytes"].samples
    }
    assert used == {
        ("GPU-aaaa", ""): 10 << 30,
        ("GPU-bbbb", ""): 7 << 30,
        ("GPU-bbbb", "MIG-1111"): 2 << 30,
        ("GPU-bbbb", "MIG-2222"): 5 << 30,
    }
    total = {s.labels["mig"]: s.value for s in families["ferry_gpu_memory_total_bytes"].samples}
    assert total["MIG-1111"] == 70 << 30
    # NVML reports no utilization for a GPU in MIG mode: only the whole GPU has the gauge.
    busy = {s.labels["gpu"]: s.value for s in families["ferry_gpu_utilization_ratio"].samples}
    assert busy == {"GPU-aaaa": 0.4}
