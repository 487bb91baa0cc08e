"""Without a GPU (or without NVML/cuda-python) discovery finds nothing, says why, and never
raises: the CPU backends still serve."""

from __future__ import annotations

import logging

import pytest

from ferry.engines.cuda.devices import Discovery, GpuDevice, discover, visible


def test_no_gpu_is_a_clear_log_line_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ferry.engines"):
        found = discover()
    if found.devices:
        pytest.skip("this machine has a GPU: tests/gpu covers discovery")
    assert found.reason
    assert any(
        r.getMessage() == f"no GPU: {found.reason}; CPU backends only" for r in caplog.records
    )


def test_cuda_visible_devices_decides_what_this_process_sees() -> None:
    gpus = (GpuDevice("GPU-a", "H200", 1 << 37, 0), GpuDevice("GPU-b", "H200", 1 << 37, 1))
    mig = (GpuDevice("MIG-c", "H200 MIG", 1 << 34, 1, "GPU-b"),)
    host = Discovery(gpus + mig, 2)

    def seen(env: dict[str, str]) -> list[tuple[str, int]]:
        return [(d.uuid, d.ordinal) for d in visible(host, env).devices]

    assert seen({}) == [("GPU-a", 0), ("GPU-b", 1), ("MIG-c", -1)]  # MIG needs selecting
    assert seen({"CUDA_VISIBLE_DEVICES": "GPU-b"}) == [("GPU-b", 0)]
    assert seen({"CUDA_VISIBLE_DEVICES": "1,0"}) == [("GPU-b", 0), ("GPU-a", 1)]
    assert seen({"CUDA_VISIBLE_DEVICES": "MIG-c"}) == [("MIG-c", 0)]
    assert seen({"CUDA_VISIBLE_DEVICES": "GPU-a,nope,GPU-b"}) == [("GPU-a", 0)]
    assert "names no device" in visible(host, {"CUDA_VISIBLE_DEVICES": "nope"}).reason
