"""The ONNX Runtime backend on its own: answers equal a plain session's, tiny batches move onto
the event loop and back, compute threads run below the event loop's CPU priority, and an
instance warming up works at the loading thread's lower one."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from ferry.common.errors import ModelLoadError
from ferry.engines import onnxruntime as backend
from ferry.engines.base import UNBOUNDED, Device, ExecutionResult, Feed
from ferry.engines.loading import LOADING_NICE, in_background
from ferry.engines.onnxruntime import (
    OnnxRuntimeEngine,
    OnnxRuntimeOptions,
    options_from_parameters,
)
from ferry.server.example_repo import write_example_repo

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("examples")
    write_example_repo(root)
    return root


async def test_a_batch_equals_a_plain_session(examples: Path) -> None:
    path = examples / "dlrm" / "1" / "model.onnx"
    instance = OnnxRuntimeEngine(path).create_instance("d", Device(), UNBOUNDED)
    rng = np.random.default_rng(2)
    parts = [
        {
            "dense": rng.standard_normal((n, 13)).astype(np.float32),
            "sparse": rng.integers(0, 10**6, (n, 26)).astype(np.int64),
        }
        for n in (3, 5)
    ]
    result = await instance.run(Feed(parts, 8))
    feeds = {name: np.concatenate([p[name] for p in parts]) for name in ("dense", "sparse")}
    (expected,) = ort.InferenceSession(str(path)).run(None, feeds)
    np.testing.assert_allclose(result.outputs["ctr"], expected, rtol=1e-5, atol=1e-6)
    await instance.close()


async def test_fast_batches_run_inline_and_an_overrun_sends_them_back(
    examples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = OnnxRuntimeEngine(examples / "echo" / "1" / "model.onnx").create_instance(
        "e", Device(), UNBOUNDED
    )
    feed = Feed([{"x": np.ones((2, 4), np.float32)}], 2)
    loop_thread = threading.get_ident()
    ran_on: list[int] = []
    original = instance._run_blocking

    def spy(f: Feed) -> backend.ExecutionResult:
        ran_on.append(threading.get_ident())
        return original(f)

    monkeypatch.setattr(instance, "_run_blocking", spy)
    monkeypatch.setattr(backend, "INLINE_BUDGET_NS", 10**9)  # every run counts as fast
    await instance.run(feed)  # first run: on the instance's thread, measured
    await instance.run(feed)  # known fast: inline
    assert ran_on[0] != loop_thread and ran_on[1] == loop_thread
    monkeypatch.setattr(backend, "INLINE_BUDGET_NS", 0)  # now every run overruns
    await instance.run(feed)  # inline once more, measured as too slow ...
    await instance.run(feed)  # ... so back on the thread
    assert ran_on[2] == loop_thread and ran_on[3] != loop_thread
    await instance.close()


async def test_a_batch_that_looks_slow_only_on_the_thread_is_tried_on_the_loop(
    examples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load the thread's measure is inflated; every PROBE_EVERY near misses, one batch is
    tried on the loop, and kept there only if it is fast there."""
    instance = OnnxRuntimeEngine(examples / "echo" / "1" / "model.onnx").create_instance(
        "e", Device(), UNBOUNDED
    )
    feed = Feed([{"x": np.ones((2, 4), np.float32)}], 2)
    loop_thread = threading.get_ident()
    ran_on: list[bool] = []  # True: on the event loop
    original = instance._run_blocking

    def spy(f: Feed) -> backend.ExecutionResult:
        ran_on.append(threading.get_ident() == loop_thread)
        return original(f)

    monkeypatch.setattr(instance, "_run_blocking", spy)
    monkeypatch.setattr(backend, "INLINE_BUDGET_NS", 0)  # never fast enough on the thread ...
    monkeypatch.setattr(backend, "PROBE_NS", 10**9)  # ... but always a near miss
    monkeypatch.setattr(backend, "PROBE_EVERY", 3)
    for _ in range(5):
        await instance.run(feed)
    assert ran_on == [False, False, False, True, False]  # the trial overran: back to the thread
    monkeypatch.setattr(backend, "INLINE_BUDGET_NS", 10**9)  # now fast on the loop
    for _ in range(3):
        await instance.run(feed)
    assert ran_on[5:] == [False, True, True]  # measured fast on the thread, then kept inline
    await instance.close()


async def test_an_inline_batch_is_judged_by_the_loops_cpu_time_not_the_clock(
    examples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch during which the OS ran something else (a client on the same cores) took long by
    the clock but cost the loop little: it stays inline."""
    instance = OnnxRuntimeEngine(examples / "echo" / "1" / "model.onnx").create_instance(
        "e", Device(), UNBOUNDED
    )
    feed = Feed([{"x": np.ones((2, 4), np.float32)}], 2)
    loop_thread = threading.get_ident()
    ran_on: list[bool] = []  # True: on the event loop
    session = instance._session  # type: ignore[attr-defined]
    run = session.run

    def preempted(*args: object, **kwargs: object) -> object:
        ran_on.append(threading.get_ident() == loop_thread)
        time.sleep(0.02)  # off the CPU for 20 ms, as if preempted
        return run(*args, **kwargs)

    monkeypatch.setattr(session, "run", preempted)
    monkeypatch.setattr(backend, "INLINE_BUDGET_NS", 5_000_000)  # 5 ms: far above the CPU cost
    for _ in range(4):
        result = await instance.run(feed)
        t = result.timings
        assert t.input_ns + t.infer_ns + t.output_ns > 20_000_000  # the clock saw every sleep
    assert ran_on == [False, True, True, True]
    await instance.close()


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="needs POSIX priorities")
async def test_compute_threads_run_below_the_event_loops_priority(examples: Path) -> None:
    engine = OnnxRuntimeEngine(examples / "echo" / "1" / "model.onnx", OnnxRuntimeOptions(1, 0, 7))
    instance = engine.create_instance("n", Device(), UNBOUNDED)
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    theirs = instance._executor.submit(
        lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    ).result()
    assert theirs == min(mine + 7, 19)
    await instance.close()


def _threads() -> set[int]:
    return {int(tid) for tid in os.listdir("/proc/self/task")}


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
async def test_a_warming_instance_works_at_the_loading_priority_and_serves_at_its_own(
    examples: Path,
) -> None:
    """A version loading beside serving ones must take little of their CPU: the session (and
    ONNX Runtime's pool threads, which take the opener's priority) is opened on the loading
    thread, and a warm-up batch runs there too; serving batches run on the instance's thread."""
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    before = _threads()
    # As the loader does: the engine, whose session the first instance takes, opens there too.
    engine = await in_background(
        OnnxRuntimeEngine, examples / "dlrm" / "1" / "model.onnx", OnnxRuntimeOptions(2, 0, 7)
    )
    instance = await in_background(engine.create_instance, "w", Device(), UNBOUNDED)
    pool = _threads() - before - {t.native_id for t in threading.enumerate()}
    assert pool  # two intra-op threads: ONNX Runtime starts one beside the caller
    assert {os.getpriority(os.PRIO_PROCESS, tid) for tid in pool} == {min(mine + LOADING_NICE, 19)}

    ran_on: list[tuple[str, int]] = []
    run_blocking = instance._run_blocking

    def recording(feed: Feed) -> ExecutionResult:
        me = threading.get_native_id()
        ran_on.append((threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, me)))
        return run_blocking(feed)

    instance._run_blocking = recording  # type: ignore[method-assign]
    rng = np.random.default_rng(3)
    batch = {
        "dense": rng.standard_normal((64, 13)).astype(np.float32),
        "sparse": rng.integers(0, 10**6, (64, 26)).astype(np.int64),
    }
    await instance.warm(Feed([batch], 64))
    await instance.run(Feed([batch], 64))
    (warm_thread, warm_nice), (serve_thread, serve_nice) = ran_on
    assert warm_thread.startswith("ferry-loading") and warm_nice == min(mine + LOADING_NICE, 19)
    assert serve_thread.startswith("ferry-w") and serve_nice == min(mine + 7, 19)
    await instance.close()


async def test_the_first_instance_takes_the_session_that_described_the_model(
    examples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a session costs CPU and dropping one holds the GIL: a load (a reload under
    traffic) opens one session per instance, not one more to read the tensors."""
    opened: list[int | None] = []
    real_open = OnnxRuntimeEngine._open

    def counting(self: OnnxRuntimeEngine, threads: int | None = None) -> object:
        opened.append(threads)
        return real_open(self, threads)

    monkeypatch.setattr(OnnxRuntimeEngine, "_open", counting)
    engine = OnnxRuntimeEngine(examples / "echo" / "1" / "model.onnx", OnnxRuntimeOptions(1))
    first = engine.create_instance("a", Device(), UNBOUNDED)
    assert opened == [None]
    second = engine.create_instance("b", Device(), UNBOUNDED)
    own_threads = engine.create_instance("c", Device(), UNBOUNDED, threads=1)
    assert opened == [None, None, 1]  # the spare went once; later instances open their own
    for instance in (first, second, own_threads):
        await instance.close()
    engine.close()


async def test_an_idle_class_instance_opens_its_own_session(
    examples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its pool threads must take the idle class from its own thread, so it never takes the
    session opened on another."""
    engine = OnnxRuntimeEngine(examples / "echo" / "1" / "model.onnx", OnnxRuntimeOptions(1))
    spare = engine._spare
    instance = engine.create_instance("i", Device(), UNBOUNDED, idle_class=True)
    assert spare is not None and instance._session is not spare
    await instance.close()
    engine.close()
    assert engine._spare is None


def _allows_spinning(session: ort.InferenceSession) -> bool:
    try:
        entry = session.get_session_options().get_session_config_entry(
            "session.intra_op.allow_spinning"
        )
    except Exception:  # not set: ONNX Runtime's default, which spins
        return True
    return entry != "0"


async def test_intra_op_threads_do_not_spin_between_batches_unless_the_config_asks(
    examples: Path,
) -> None:
    """Spinning burns a core between small batches on the cores the front end needs."""
    path = examples / "echo" / "1" / "model.onnx"
    default = OnnxRuntimeEngine(path, options_from_parameters({}))
    spinning = OnnxRuntimeEngine(path, options_from_parameters({"allow_spinning": "TRUE"}))
    assert default._spare is not None and not _allows_spinning(default._spare)
    assert spinning._spare is not None and _allows_spinning(spinning._spare)


async def test_a_spinning_setting_that_is_not_a_boolean_refuses_the_model() -> None:
    with pytest.raises(ModelLoadError, match="parameter 'allow_spinning' must be \"true\" or"):
        options_from_parameters({"allow_spinning": "sometimes"})
