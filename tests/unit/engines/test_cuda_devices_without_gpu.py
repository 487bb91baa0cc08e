"""Without a GPU (or without NVML/cuda-python) discovery finds nothing, says why, and never
raises: the CPU backends still serve."""

from __future__ import annotations

import logging

import pytest

from engines.cuda.devices import discover


def test_no_gpu_is_a_clear_log_line_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ferry.engines"):
        found = discover()
    if found.devices:
        pytest.skip("this machine has a GPU: tests/gpu covers discovery")
    assert found.reason
    assert any(
        r.getMessage() == f"no GPU: {found.reason}; CPU backends only" for r in caplog.records
    )
