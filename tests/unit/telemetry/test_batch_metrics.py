"""Batch metrics of a model with several profiles are labelled with its name and version: one
series per model version, whichever profile's queue ran the batch."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ferry.engines.base import Device, Profile, ShapeRange
from ferry.engines.fake import FakeEngine
from ferry.scheduler import BatchingConfig, ModelScheduler
from ferry.telemetry.metrics import Metrics
from tests.prometheus_text import samples as parsed

pytestmark = pytest.mark.asyncio

SHORT = Profile(0, {"x": ShapeRange((1,), (8,), (8,))})
LONG = Profile(1, {"x": ShapeRange((1,), (64,), (64,))})


async def test_batches_of_every_profile_count_under_the_model_version() -> None:
    metrics = Metrics()
    engine = FakeEngine()
    instances = [engine.create_instance(f"p{p.index}", Device(), p) for p in (SHORT, LONG)]
    config = BatchingConfig(max_batch_size=16, dynamic=True)
    scheduler = ModelScheduler("ranker:3", instances, config, observers=[metrics])
    await scheduler.start()
    try:
        for length, rows in ((4, 2), (40, 3)):  # one batch on each profile
            x = np.zeros((rows, length), np.float32)
            await scheduler.infer({"x": x}, rows)
        await asyncio.sleep(0)
    finally:
        await scheduler.stop()
    samples = parsed(metrics.exposition().decode())
    labels = (("model", "ranker"), ("version", "3"))
    assert samples[("nv_inference_count", labels)] == 5
    assert samples[("nv_inference_exec_count", labels)] == 2
    assert samples[("ferry_batch_rows_count", labels)] == 2
    versions = {dict(key)["version"] for _, key in samples if "version" in dict(key)}
    assert versions == {"3"}
