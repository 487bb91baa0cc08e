"""Optimization profiles and padding: each request joins the smallest profile it fits, each
profile runs only on its own instances, and padded batches give every request its own answer."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ferry.common.errors import InvalidInput
from ferry.engines.base import Profile, ShapeRange
from ferry.engines.fake import FakeEngine
from ferry.scheduler import BatchingConfig, CutOutput, ModelScheduler, PaddedInput, Padding
from ferry.scheduler.request import InferenceResult
from tests.unit.scheduler.conftest import settle, started

pytestmark = pytest.mark.asyncio

SHORT = Profile(0, {"x": ShapeRange((1,), (8,), (8,))})
LONG = Profile(1, {"x": ShapeRange((1,), (64,), (64,))})
PAD = Padding({"x": PaddedInput(0.0, (0,))}, {"y": CutOutput("x", (0,))})
CONFIG = BatchingConfig(max_batch_size=16, dynamic=True)


async def make(
    profiles: list[Profile], padding: Padding | None = None, per_profile: int = 1
) -> tuple[ModelScheduler, FakeEngine]:
    return await started(
        CONFIG, instances=per_profile, profiles=profiles, padding=padding, name="prof"
    )


def ask(scheduler: ModelScheduler, length: int, value: float) -> asyncio.Task[InferenceResult]:
    x = value + np.arange(length, dtype=np.float32)[None, :]
    return asyncio.create_task(scheduler.infer({"x": x}, 1))



async def test_each_request_runs_on_the_smallest_profile_it_fits() -> None:
    scheduler, engine = await make([LONG, SHORT])
    results = await asyncio.gather(ask(scheduler, 4, 1.0), ask(scheduler, 40, 2.0))
    assert sorted(engine.shapes_log) == [(0, (1, 4)), (1, (1, 40))]
    assert results[1].outputs["y"].shape == (1, 40)
    await scheduler.stop()


async def test_a_shape_that_fits_no_profile_is_refused_naming_the_ranges() -> None:
    scheduler, engine = await make([SHORT, LONG])
    with pytest.raises(InvalidInput) as info:
        await ask(scheduler, 65, 0.0)
    assert "x [65]" in str(info.value)
    assert "profile 0 (x [1]..[8])" in str(info.value)
    assert "profile 1 (x [1]..[64])" in str(info.value)
    assert engine.shapes_log == []
    await scheduler.stop()


async def test_instances_never_run_another_profiles_batches() -> None:
    scheduler, engine = await make([SHORT, LONG], per_profile=2)
    engine.gate = asyncio.Event()
    tasks = [ask(scheduler, n, float(n)) for n in (3, 50, 7, 9, 1, 64, 8, 20)]
    await settle()
    engine.gate.set()
    await asyncio.gather(*tasks)
    for instance in engine.instances:
        assert instance.batches, f"{instance.name} never ran"
    for profile_index, shape in engine.shapes_log:
        limit = (SHORT, LONG)[profile_index].ranges["x"].max[0]
        assert shape[1] <= limit
    await scheduler.stop()


async def test_padded_batch_gives_each_request_its_own_cut_back_answer() -> None:
    scheduler, engine = await make([LONG], padding=PAD)
    engine.gate = asyncio.Event()
    blocker = ask(scheduler, 2, 0.0)
    await settle()
    lengths = [5, 1, 17, 9]
    tasks = [ask(scheduler, n, 100.0 * i) for i, n in enumerate(lengths)]
    await settle()
    engine.gate.set()
    await blocker
    results = await asyncio.gather(*tasks)
    assert engine.shapes_log[1] == (1, (4, 17))  # padded to the longest member
    for i, (n, result) in enumerate(zip(lengths, results, strict=True)):
        expected = 2 * (100.0 * i + np.arange(n, dtype=np.float32))[None, :]
        np.testing.assert_array_equal(result.outputs["y"], expected)
    await scheduler.stop()


async def test_without_padding_only_equal_lengths_share_a_batch() -> None:
    scheduler, engine = await make([LONG])
    engine.gate = asyncio.Event()
    blocker = ask(scheduler, 2, 0.0)
    await settle()
    tasks = [ask(scheduler, n, 0.0) for n in (5, 7, 5, 7)]
    await settle()
    engine.gate.set()
    await asyncio.gather(blocker, *tasks)
    assert sorted(shape for _, shape in engine.shapes_log[1:]) == [(2, 5), (2, 7)]
    await scheduler.stop()


async def test_buckets_round_the_padded_length_up_but_not_past_the_profile() -> None:
    bucketed = Padding({"x": PaddedInput(-1.0, (0,), (16, 32, 128))})
    scheduler, engine = await make([LONG], padding=bucketed)
    await ask(scheduler, 10, 0.0)
    await ask(scheduler, 40, 0.0)  # the 128 bucket is beyond the profile's 64
    assert [shape for _, shape in engine.shapes_log] == [(1, 16), (1, 64)]
    await scheduler.stop()


async def test_profiles_that_differ_in_batch_size_take_requests_by_rows() -> None:
    # As TensorRT plans are often built: one profile for small batches, one for large ones.
    few = Profile(0, {"x": ShapeRange((4,), (4,), (4,))}, max_rows=4)
    many = Profile(1, {"x": ShapeRange((4,), (4,), (4,))}, max_rows=16)
    scheduler, engine = await make([many, few])
    x = np.zeros((1, 4), np.float32)
    await scheduler.infer({"x": x.repeat(3, axis=0)}, 3)
    await scheduler.infer({"x": x.repeat(10, axis=0)}, 10)
    await scheduler.infer({"x": x.repeat(40, axis=0)}, 40)  # more than any: split on the largest
    assert engine.shapes_log[:2] == [(0, (3, 4)), (1, (10, 4))]
    chunks = engine.shapes_log[2:]
    assert {p for p, _ in chunks} == {1} and sum(s[0] for _, s in chunks) == 40
    assert max(s[0] for _, s in chunks) <= 16
    await scheduler.stop()
