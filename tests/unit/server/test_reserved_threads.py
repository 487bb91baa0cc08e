"""A reserved CPU instance runs one ONNX Runtime thread and the others share the cores but one
(left to the event loop, gRPC and the reserved instance), unless the config names a thread count;
it computes at the event loop's OS priority and may run batches on the loop up to a larger
budget, the others in the idle scheduling class (without a reservation: all at nice +10); which
instances are reserved agrees with the scheduler."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from ferry.common.cpus import usable_cpus
from ferry.engines.onnxruntime import INLINE_BUDGET_NS, RESERVED_INLINE_BUDGET_NS
from ferry.server.example_repo import write_example_repo
from ferry.server.repository import ModelRepository

pytestmark = pytest.mark.asyncio

RESERVED = (
    "dynamic_batching { priority_levels: 2 }\n"
    "instance_group [ { count: 2 kind: KIND_CPU } ]\n"
    'parameters [ { key: "ferry.reserved_instances" value: { string_value: "1" } } ]\n'
)


def threads_by_instance(repository: ModelRepository, model: str) -> dict[str, int]:
    runner = next(iter(repository.get(model, "").scheduler._runners.values()))
    return {
        i.name: i._session.get_session_options().intra_op_num_threads  # type: ignore[attr-defined]
        for i in runner._instances
    }


async def load(root: Path, extra: str) -> ModelRepository:
    write_example_repo(root)
    config = root / "dlrm" / "config.pbtxt"
    text = config.read_text().replace("instance_group [ { count: 1 kind: KIND_CPU } ]\n", "")
    config.write_text(
        text.replace("dynamic_batching {\n  max_queue_delay_microseconds: 200\n}\n", "") + extra
    )
    repository = ModelRepository(root)
    await repository.load()
    return repository


async def test_the_reserved_instance_runs_one_thread_and_the_rest_share_the_cores(
    tmp_path: Path,
) -> None:
    repository = await load(tmp_path, RESERVED)
    try:
        runner = next(iter(repository.get("dlrm", "").scheduler._runners.values()))
        assert runner.reserved == ("dlrm_1_1",)  # the last of the profile's instances
        shared = max(1, usable_cpus() - 1)  # one unreserved instance: every core but one
        assert threads_by_instance(repository, "dlrm") == {"dlrm_1_0": shared, "dlrm_1_1": 1}
    finally:
        await repository.stop()


async def test_a_thread_count_in_the_config_holds_for_every_instance(tmp_path: Path) -> None:
    extra = RESERVED.replace(
        "parameters [ ",
        'parameters [ { key: "intra_op_thread_count" value: { string_value: "3" } }, ',
    )
    repository = await load(tmp_path, extra)
    try:
        assert set(threads_by_instance(repository, "dlrm").values()) == {3}
    finally:
        await repository.stop()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
async def test_instances_share_the_cpus_the_process_may_use_not_the_hosts(
    tmp_path: Path,
) -> None:
    """Pinned to one CPU (a container's cpuset, taskset), the instance gets one thread, however
    many the host has."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        repository = await load(tmp_path, "instance_group [ { count: 1 kind: KIND_CPU } ]\n")
    finally:
        os.sched_setaffinity(0, before)
    try:
        assert threads_by_instance(repository, "dlrm") == {"dlrm_1_0": 1}
    finally:
        await repository.stop()


def compute_priority(repository: ModelRepository, model: str) -> dict[str, str]:
    """Each instance's compute thread: its scheduling class, and with the normal class how far
    below this (the event loop's) thread it runs."""
    runner = next(iter(repository.get(model, "").scheduler._runners.values()))
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def read() -> str:
        tid = threading.get_native_id()
        if os.sched_getscheduler(tid) == os.SCHED_IDLE:
            return "idle class"
        return f"nice +{os.getpriority(os.PRIO_PROCESS, tid) - mine}"

    return {
        i.name: i._executor.submit(read).result()  # type: ignore[attr-defined]
        for i in runner._instances
    }


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="needs Linux scheduling classes")
async def test_the_reserved_instance_computes_at_the_loops_priority_the_others_in_the_idle_class(
    tmp_path: Path,
) -> None:
    """With a reservation the unreserved instances are background work: their threads run only
    on CPU time that the event loop and the reserved instance leave."""
    repository = await load(tmp_path, RESERVED)
    try:
        assert compute_priority(repository, "dlrm") == {
            "dlrm_1_0": "idle class",
            "dlrm_1_1": "nice +0",
        }
        reserved = repository.get("dlrm", "").scheduler._runners
        instances = {i.name: i for i in next(iter(reserved.values()))._instances}
        # The reserved instance may run batches on the loop up to its larger budget.
        assert instances["dlrm_1_1"]._budget() == RESERVED_INLINE_BUDGET_NS  # type: ignore[attr-defined]
        assert instances["dlrm_1_0"]._budget() == INLINE_BUDGET_NS  # type: ignore[attr-defined]
    finally:
        await repository.stop()


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="needs POSIX priorities")
async def test_without_a_reservation_every_instance_computes_below_the_loop(
    tmp_path: Path,
) -> None:
    repository = await load(tmp_path, "instance_group [ { count: 2 kind: KIND_CPU } ]\n")
    try:
        if os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) + 10 > 19:
            pytest.skip("this process already runs at the lowest priority")
        assert compute_priority(repository, "dlrm") == {
            "dlrm_1_0": "nice +10",
            "dlrm_1_1": "nice +10",
        }
    finally:
        await repository.stop()
