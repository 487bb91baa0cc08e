"""The front end on one CPU, compute on all (common/cpus.py): `ferry serve` pins the thread that
runs the event loop, so gRPC's threads inherit its CPU, and every thread that computes widens
back to the whole set. Run in a child process: pinning is process state."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux and two CPUs",
)

CHILD = textwrap.dedent(
    """
    import asyncio, os, sys, threading
    from pathlib import Path
    from ferry.common import cpus
    from ferry.engines.base import UNBOUNDED, Device
    from ferry.engines.loading import in_background
    from ferry.engines.onnxruntime import OnnxRuntimeEngine

    everything = os.sched_getaffinity(0)
    front = cpus.pin_front_end()
    assert front == min(everything), front
    assert os.sched_getaffinity(0) == {front}
    assert cpus.usable_cpus() == len(everything)  # thread pools still sized for every CPU

    seen = {}
    plain = threading.Thread(target=lambda: seen.update(plain=os.sched_getaffinity(0)))
    plain.start(); plain.join()
    assert seen["plain"] == {front}  # a thread the front end starts inherits its CPU

    async def main():
        engine = await in_background(OnnxRuntimeEngine, Path(sys.argv[1]))
        instance = await in_background(engine.create_instance, "i", Device(), UNBOUNDED)
        loading = await in_background(os.sched_getaffinity, 0)
        computing = instance._executor.submit(os.sched_getaffinity, 0).result()
        await instance.close()
        return loading, computing

    loading, computing = asyncio.run(main())
    assert loading == everything and computing == everything, (loading, computing)
    print("ok")
    """
)


def test_the_front_end_runs_on_one_cpu_and_compute_threads_on_all(tmp_path: object) -> None:
    from pathlib import Path

    from ferry.server.example_repo import write_example_repo

    root = Path(str(tmp_path))
    write_example_repo(root)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(root / "echo" / "1" / "model.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_without_pinning_nothing_changes() -> None:
    from ferry.common import cpus

    before = os.sched_getaffinity(0)
    cpus.widen_to_compute()  # a no-op until the front end is pinned
    assert os.sched_getaffinity(0) == before
    assert cpus.usable_cpus() == len(before)


def test_ferry_serve_pins_its_front_end_unless_told_not_to(
    model_repo: object, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The served process: its main thread (the event loop) on one CPU, by default; with
    --no-pin-front-end on every CPU it was given."""
    from pathlib import Path

    from tests.conftest import start_server, stop_server

    everything = os.sched_getaffinity(0)
    for extra, expected in (((), {min(everything)}), (("--no-pin-front-end",), everything)):
        running = start_server(Path(str(model_repo)), tmp_path_factory.mktemp("pin"), *extra)
        try:
            assert os.sched_getaffinity(running.process.pid) == expected
        finally:
            stop_server(running)
