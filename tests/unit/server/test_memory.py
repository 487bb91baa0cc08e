"""The memory budget: what a request costs, held and given back, refused past the limit; the
default follows the memory the process may use."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferry.common.errors import QueueFull
from ferry.common.memory import usable_memory_bytes
from ferry.server.memory import CALL_OVERHEAD_BYTES, MemoryBudget


def test_a_request_costs_its_message_and_outputs_twice_and_the_call() -> None:
    assert MemoryBudget.cost(1000, 10) == 2000 + 20 + CALL_OVERHEAD_BYTES


def test_past_the_limit_a_request_is_refused_and_nothing_is_held_for_it() -> None:
    budget = MemoryBudget(100)
    budget.hold(60)
    with pytest.raises(QueueFull, match="memory budget: requests in flight hold 60 bytes of 100"):
        budget.hold(41)
    assert budget.held_bytes == 60
    budget.release(60)
    budget.hold(100)
    assert MemoryBudget(0).fits(10**15)  # 0: no budget


def test_usable_memory_is_the_hosts_when_no_limit_is_readable(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        2048 kB\nMemFree:  1 kB\n")
    found = usable_memory_bytes(meminfo)
    assert 0 < found <= 2048 * 1024  # a container's limit may be smaller still
    assert usable_memory_bytes(tmp_path / "absent") >= 0
