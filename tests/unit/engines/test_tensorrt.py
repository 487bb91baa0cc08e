"""The TensorRT backend against doubles of TensorRT and CUDA (tests/doubles/): neither exists on
the CI machines. The doubles keep TensorRT's contracts (None and a logged error for a plan it
cannot load, False for a refused shape) and CUDA's (ordered streams, fixed addresses, graphs
that replay what they captured), so what is tested here is Ferry's own code: reading the plan,
refusing what it cannot serve, binding one profile for life, staging, shapes, addresses, graphs,
batches in flight and cleanup."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ferry.common.errors import EngineError, ModelLoadError
from ferry.engines.base import Device, Feed
from ferry.engines.tensorrt.engine import TensorRTEngine, TensorRTOptions
from tests.doubles import cuda_host, tensorrt_api
from tests.doubles.tensorrt_api import write_plan

pytestmark = pytest.mark.asyncio
GPU = Device("gpu", 0)

AFFINE_TENSORS = [
    {"name": "x", "mode": "INPUT", "dtype": "FLOAT", "shape": [-1, -1]},
    {"name": "y", "mode": "OUTPUT", "dtype": "FLOAT", "shape": [-1, -1]},
    {"name": "total", "mode": "OUTPUT", "dtype": "FLOAT", "shape": [-1, 1]},
]
# Two profiles: small batches of short rows, and large batches of long rows.
AFFINE_PROFILES = [
    {"x": [[1, 1], [8, 4], [16, 8]]},
    {"x": [[1, 1], [128, 32], [256, 64]]},
]


def affine_plan(tmp_path: Path, **changes: Any) -> Path:
    tensors = changes.pop("tensors", AFFINE_TENSORS)
    profiles = changes.pop("profiles", AFFINE_PROFILES)
    return write_plan(tmp_path / "model.plan", "affine", tensors, profiles, **changes)


def load(path: Path, options: TensorRTOptions | None = None) -> TensorRTEngine:
    return TensorRTEngine(
        path, [0], options or TensorRTOptions(), trt=tensorrt_api.module(), cuda=cuda_host.toolkit()
    )


def feed(*arrays: np.ndarray) -> Feed:
    return Feed([{"x": a} for a in arrays], sum(len(a) for a in arrays))


def rows(n: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32)


async def test_the_plan_gives_tensors_types_and_profiles(tmp_path: Path) -> None:
    engine = load(affine_plan(tmp_path))
    assert [(s.name, s.datatype.name, s.dims) for s in engine.inputs] == [("x", "FP32", (-1, -1))]
    assert [s.name for s in engine.outputs] == ["y", "total"]
    assert engine.batch_major
    small, large = engine.profiles
    assert (small.index, small.max_rows, small.ranges["x"].max) == (0, 16, (8,))
    assert (large.index, large.max_rows, large.ranges["x"].min) == (1, 256, (1,))
    (whole,) = engine.profiles_for(False)[:1]
    assert whole.max_rows == 0 and whole.ranges["x"].max == (16, 8)


@pytest.mark.parametrize(
    ("plan", "reason"),
    [
        (b"\x00garbage", "magic tag is wrong"),
        (b"", "magic tag is wrong"),
    ],
)
async def test_an_unreadable_plan_is_refused_with_tensorrts_reason(
    tmp_path: Path, plan: bytes, reason: str
) -> None:
    path = tmp_path / "model.plan"
    path.write_bytes(plan)
    with pytest.raises(ModelLoadError) as info:
        load(path)
    assert "cannot deserialize this plan" in str(info.value) and reason in str(info.value)
    assert str(path) in str(info.value)


async def test_a_plan_from_another_tensorrt_version_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"built by TensorRT 10\.3\.0\.26.*rebuild it"):
        load(affine_plan(tmp_path, version="10.3.0.26"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"location": "HOST"}, "host memory"),
        ({"vectorized": 1}, "vectorized format"),
        ({"dtype": "FP8"}, "TensorRT type FP8"),
    ],
)
async def test_tensors_ferry_cannot_feed_are_refused_at_load(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    tensors = [dict(AFFINE_TENSORS[0], **change), *AFFINE_TENSORS[1:]]
    with pytest.raises(ModelLoadError, match=message):
        load(affine_plan(tmp_path, tensors=tensors))


async def test_a_profile_that_needs_several_rows_is_refused(tmp_path: Path) -> None:
    engine = load(affine_plan(tmp_path, profiles=[{"x": [[4, 1], [8, 4], [16, 8]]}]))
    with pytest.raises(ModelLoadError, match="at least 4 rows"):
        engine.profiles_for(True)


async def test_no_gpu_no_plan(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="only on a GPU"):
        TensorRTEngine(affine_plan(tmp_path), [], trt=tensorrt_api.module())


async def test_batches_are_computed_on_the_instances_own_profile(tmp_path: Path) -> None:
    engine = load(affine_plan(tmp_path))
    instance = engine.create_instance("m_0", GPU, engine.profiles[1])
    assert instance.context.active_optimization_profile == 1
    try:
        for n_rows, width in ((3, 5), (128, 64), (1, 1), (7, 5)):
            parts = [rows(n_rows, width, seed) for seed in range(2)]
            result = await instance.run(feed(*parts))
            x = np.concatenate(parts)
            np.testing.assert_allclose(result.outputs["y"], 2 * x + 1, rtol=1e-6)
            np.testing.assert_allclose(result.outputs["total"], x.sum(1, keepdims=True), rtol=1e-5)
            assert result.outputs["y"].flags.owndata  # copied out: the slot serves the next batch
    finally:
        await instance.close()


async def test_a_padded_feed_is_gathered_with_its_pad_value(tmp_path: Path) -> None:
    engine = load(affine_plan(tmp_path))
    instance = engine.create_instance("m_0", GPU, engine.profiles[0])
    try:
        short, long = rows(2, 3), rows(1, 6)
        result = await instance.run(Feed([{"x": short}, {"x": long}], 3, {"x": ((6,), 0.0)}))
        assert result.outputs["y"].shape == (3, 6)
        np.testing.assert_allclose(result.outputs["y"][:2, :3], 2 * short + 1, rtol=1e-6)
        np.testing.assert_allclose(result.outputs["y"][:2, 3:], 1.0)  # 2 * pad + 1
    finally:
        await instance.close()


async def test_a_shape_outside_the_profile_fails_that_batch_only(tmp_path: Path) -> None:
    engine = load(affine_plan(tmp_path))
    instance = engine.create_instance("m_0", GPU, engine.profiles[0])
    try:
        with pytest.raises(EngineError, match=r"refused shape \[2, 9\].*outside profile 0"):
            await instance.run(feed(rows(2, 9)))
        result = await instance.run(feed(rows(2, 8)))
        assert result.outputs["y"].shape == (2, 8)
    finally:
        await instance.close()


async def test_a_failed_enqueue_is_reported_and_the_instance_recovers(tmp_path: Path) -> None:
    engine = load(affine_plan(tmp_path))
    instance = engine.create_instance("m_0", GPU, engine.profiles[0])
    try:
        engine.engine_on(0).fail_execute = True
        for _ in range(3):  # more failures than slots: each failure gives its slot back
            with pytest.raises(
                EngineError, match="execute_async_v3 failed: enqueueV3: an injected"
            ):
                await instance.run(feed(rows(2, 4)))
        engine.engine_on(0).fail_execute = False
        assert (await instance.run(feed(rows(2, 4)))).outputs["y"].shape == (2, 4)
    finally:
        await instance.close()


async def test_cuda_graphs_replay_each_shape_with_fresh_data(tmp_path: Path) -> None:
    engine = load(affine_plan(tmp_path), TensorRTOptions(cuda_graphs=True, in_flight=1))
    instance = engine.create_instance("m_0", GPU, engine.profiles[0])
    context = instance.context
    try:
        first = await instance.run(feed(rows(4, 8, seed=1)))
        assert instance.graphs == 1
        calls = context.executions  # the plain run and the capture
        for seed in range(2, 6):  # same shape: the graph replays, TensorRT is not called
            x = rows(4, 8, seed)
            result = await instance.run(feed(x))
            np.testing.assert_allclose(result.outputs["y"], 2 * x + 1, rtol=1e-6)
        assert context.executions == calls
        assert not np.array_equal(first.outputs["y"], result.outputs["y"])
        await instance.run(feed(rows(5, 8)))  # a new shape: run plainly, then captured
        assert instance.graphs == 2
    finally:
        await instance.close()


async def test_graphs_stop_at_their_bound(tmp_path: Path) -> None:
    options = TensorRTOptions(cuda_graphs=True, max_graphs=2, in_flight=1)
    engine = load(affine_plan(tmp_path), options)
    instance = engine.create_instance("m_0", GPU, engine.profiles[0])
    try:
        for n in range(1, 6):
            x = rows(n, 3)
            result = await instance.run(feed(x))
            np.testing.assert_allclose(result.outputs["y"], 2 * x + 1, rtol=1e-6)
        assert instance.graphs == 2
    finally:
        await instance.close()


async def test_two_batches_in_flight_each_get_their_own_answer(tmp_path: Path) -> None:
    engine = load(affine_plan(tmp_path))
    instance = engine.create_instance("m_0", GPU, engine.profiles[1])
    assert instance.in_flight == 2
    try:
        batches = [rows(n, 16, seed=n) for n in (3, 50, 7, 90)]
        for pair in (batches[:2], batches[2:]):  # two at once: one slot each
            results = await asyncio.gather(*(instance.run(feed(b)) for b in pair))
            for x, result in zip(pair, results, strict=True):
                np.testing.assert_allclose(result.outputs["y"], 2 * x + 1, rtol=1e-6)
        # More at once than slots: the third waits for a slot, and every answer is right.
        results = await asyncio.gather(*(instance.run(feed(b)) for b in batches))
        for x, result in zip(batches, results, strict=True):
            np.testing.assert_allclose(result.outputs["y"], 2 * x + 1, rtol=1e-6)
    finally:
        await instance.close()


async def test_close_frees_every_buffer(tmp_path: Path) -> None:
    before = cuda_host.HostBuffer.live
    engine = load(affine_plan(tmp_path), TensorRTOptions(cuda_graphs=True))
    instances = [engine.create_instance(f"m_{i}", GPU, p) for i, p in enumerate(engine.profiles)]
    # 2 slots x 3 tensors x (pinned + device) per instance
    assert cuda_host.HostBuffer.live - before == 2 * 2 * 3 * 2
    await instances[0].run(feed(rows(2, 2)))
    graph = next(iter(instances[0]._graphs.values()))
    for instance in instances:
        await instance.close()
    engine.close()
    assert cuda_host.HostBuffer.live == before and graph.closed


async def test_an_instance_that_cannot_start_frees_what_it_made(tmp_path: Path) -> None:
    import threading

    from ferry.engines.base import Profile

    engine = load(affine_plan(tmp_path))
    before = (cuda_host.HostBuffer.live, threading.active_count(), len(cuda_host.STREAMS))
    missing = Profile(7, engine.profiles[0].ranges, 16)  # the plan has profiles 0 and 1 only
    with pytest.raises(ModelLoadError, match=r"refused optimization profile 7: .*no profile 7"):
        engine.create_instance("m_0", GPU, missing)
    after = (cuda_host.HostBuffer.live, threading.active_count(), len(cuda_host.STREAMS))
    assert after == before


async def test_a_cancelled_run_gives_its_slot_back_when_the_stream_is_done(tmp_path: Path) -> None:
    engine = load(affine_plan(tmp_path))
    instance = engine.create_instance("m_0", GPU, engine.profiles[0])
    try:
        for _ in range(instance.in_flight + 1):  # more cancellations than slots
            task = asyncio.create_task(instance.run(feed(rows(3, 4))))
            await asyncio.sleep(0)  # submitted to the enqueue thread
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        for _ in range(50):  # the threads finish the cancelled batches and return their slots
            if instance._pipeline.free_slots == instance.in_flight:
                break
            await asyncio.sleep(0.01)
        assert instance._pipeline.free_slots == instance.in_flight  # none was lost
        x = rows(3, 4, seed=9)
        result = await instance.run(feed(x))
        np.testing.assert_allclose(result.outputs["y"], 2 * x + 1, rtol=1e-6)
    finally:
        await instance.close()
