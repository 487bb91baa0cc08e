"""Faults and hostile input against the real server: each fails alone, with a precise status,
and tells nobody else's data."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc.aio as tca
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer


async def _lookup(client: tca.InferenceServerClient, ident: int) -> np.ndarray | str:
    tensor = tca.InferInput("ids", [1, 1], "INT64")
    tensor.set_data_from_numpy(np.array([[ident]], dtype=np.int64))
    try:
        result = await client.infer("lookup", [tensor])
    except InferenceServerException as exc:
        return f"{exc.status()} {exc.message()}"
    return result.as_numpy("y")


@pytest.mark.asyncio
async def test_poisoned_requests_fail_alone_and_tell_only_their_own_data(
    server: RunningServer,
) -> None:
    """150 good requests (ids 0..99) sent with 50 poisoned ones (ids 5000+): the lookup fails a
    whole batch on a bad id; Ferry finds the culprits, answers everyone else."""
    client = tca.InferenceServerClient(server.address)
    try:
        good = [i % 100 for i in range(150)]
        bad = [5000 + i for i in range(50)]
        order = [("good", g) for g in good] + [("bad", b) for b in bad]
        order = [order[(i * 37) % len(order)] for i in range(len(order))]  # mixed, deterministic
        answers = await asyncio.gather(*(_lookup(client, ident) for _, ident in order))
    finally:
        await client.close()
    for (kind, ident), answer in zip(order, answers, strict=True):
        if kind == "good":
            assert isinstance(answer, np.ndarray), answer
            np.testing.assert_array_equal(answer[0], np.arange(4 * ident, 4 * ident + 4))
        else:
            assert isinstance(answer, str) and "StatusCode.INTERNAL" in answer
            named = {int(n) for n in re.findall(r"\b5\d{3}\b", answer)}
            assert named <= {ident}, answer  # at most its own id, never a batch-mate's
    metrics = await asyncio.to_thread(_scrape, server.metrics_url)
    assert _counter(metrics, "ferry_isolated_batches_total") >= 1  # they really shared batches
    assert 1 <= _counter(metrics, "ferry_isolated_culprits_total") <= len(bad)


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def _counter(metrics: str, name: str) -> float:
    found = re.search(name + r'\{model="lookup",version="1"\} (\S+)', metrics)
    assert found, name
    return float(found.group(1))
