"""Without NVML or a driver the GPU collector is empty and says why once; nothing fails."""

from __future__ import annotations

import logging

import pytest

from ferry.telemetry.gpu import GpuCollector


def test_no_gpu_means_no_gpu_metrics_and_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ferry.telemetry"):
        collector = GpuCollector()
    if collector.available:
        pytest.skip("this machine has a GPU: tests/gpu covers it")
    assert list(collector.collect()) == []
    messages = [r.getMessage() for r in caplog.records if r.name == "ferry.telemetry"]
    assert len(messages) == 1 and messages[0].startswith("no GPU metrics: ")
