"""Warm-up: `model_warmup` runs on every instance before a version serves; a bad entry fails the
load naming it; readiness (the model's, ServerReady and the health service) waits for it."""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import start_server, stop_server

ECHO_WARMUP = """
instance_group [ { count: 2 kind: KIND_CPU } ]
model_warmup [
  {
    name: "zeros"
    batch_size: 2
    count: 3
    inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } }
  },
  {
    name: "from a file"
    batch_size: 1
    inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] input_data_file: "x.bin" } }
  }
]
"""


def repository(model_repo: Path, tmp_path: Path, extra: str, name: str = "echo") -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(model_repo / name, repo / "warm")
    config = repo / "warm" / "config.pbtxt"
    text = config.read_text().replace(f'name: "{name}"', 'name: "warm"')
    text = re.sub(r"instance_group \[.*\]\n", "", text)
    config.write_text(text + extra)
    (repo / "warm" / "warmup").mkdir()
    (repo / "warm" / "warmup" / "x.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    return repo


def test_every_instance_runs_every_entry_before_serving(model_repo: Path, tmp_path: Path) -> None:
    server = start_server(repository(model_repo, tmp_path, ECHO_WARMUP), tmp_path)
    try:
        # (3 runs of "zeros" + 1 of "from a file") on each of the 2 instances
        assert "model warm version 1 warmed up: 8 run(s) on 2 instance(s)" in server.log()
        client = tc.InferenceServerClient(server.address)
        x = tc.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        np.testing.assert_array_equal(client.infer("warm", [x]).as_numpy("y"), np.ones((1, 4)))
    finally:
        stop_server(server)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("TYPE_FP32 dims: [ 4 ] zero", "TYPE_INT64 dims: [ 4 ] zero"),
         "model_warmup 'zeros' input 'x': data_type TYPE_INT64 differs from the input's TYPE_FP32"),
        (('"x.bin"', '"missing.bin"'), "model_warmup 'from a file' input 'x': cannot read"),
        (('"x.bin"', '"../config.pbtxt"'), "input_data_file must be a file under warmup/"),
        (("batch_size: 2", "batch_size: 5000"), "batch_size 5000 exceeds max_batch_size 1024"),
        (('key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true }',
          'key: "z" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true }'),
         "missing ['x'], unknown ['z']"),
    ],
)
def test_a_bad_warmup_fails_the_load_and_says_which(
    model_repo: Path, tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    repo = repository(model_repo, tmp_path, ECHO_WARMUP.replace(*change))
    server = start_server(repo, tmp_path)
    try:
        client = tc.InferenceServerClient(server.address)
        (entry,) = client.get_model_repository_index().models
        assert entry.state == "UNAVAILABLE" and message in entry.reason, entry.reason
    finally:
        stop_server(server)


def test_readiness_waits_for_the_warmup(model_repo: Path, tmp_path: Path) -> None:
    """`dlrm` warming up with twenty 1,024-row batches takes a while: during the load the
    model is LOADING and not ready, the server not ready (strict readiness) and its health
    NOT_SERVING; after it, all three say ready."""
    heavy = """
model_warmup [ {
  name: "full batches"
  batch_size: 1024
  count: 20
  inputs { key: "dense" value: { data_type: TYPE_FP32 dims: [ 13 ] random_data: true } }
  inputs { key: "sparse" value: { data_type: TYPE_INT64 dims: [ 26 ] random_data: true } }
} ]
"""
    repo = repository(model_repo, tmp_path, heavy, name="dlrm")
    server = start_server(repo, tmp_path, "--model-control-mode", "explicit", "--strict-readiness")
    try:
        client = tc.InferenceServerClient(server.address)
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.address))
        seen: dict[str, Any] = {}
        loader = threading.Thread(target=lambda: client.load_model("warm"))
        loader.start()
        deadline = time.monotonic() + 30
        while "during" not in seen and time.monotonic() < deadline:
            state = {m.name: m.state for m in client.get_model_repository_index().models}
            if state.get("warm") == "LOADING":
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                seen["during"] = (client.is_model_ready("warm"), client.is_server_ready(),
                                  reply.status)  # fmt: skip
            time.sleep(0.02)
        loader.join(60)
        assert seen["during"] == (False, False, health_pb2.HealthCheckResponse.NOT_SERVING)
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        after = (client.is_model_ready("warm"), client.is_server_ready(), reply.status)
        assert after == (True, True, health_pb2.HealthCheckResponse.SERVING)
        assert "warmed up: 20 run(s) on 1 instance(s)" in server.log()
    finally:
        stop_server(server)


def test_a_failed_warmup_on_reload_keeps_the_old_version(
    model_repo: Path, tmp_path: Path
) -> None:
    server = start_server(model_repo, tmp_path, "--model-control-mode", "explicit",
                          "--load-model", "echo")  # fmt: skip
    try:
        client = tc.InferenceServerClient(server.address)
        bad = ('{"max_batch_size": 8, "model_warmup": [{"name": "w", "batch_size": 1, "inputs": '
               '{"x": {"data_type": "TYPE_INT32", "dims": [4], "zero_data": true}}}]}')  # fmt: skip
        with pytest.raises(InferenceServerException) as info:
            client.load_model("echo", config=bad)
        assert "model_warmup 'w'" in str(info.value.message())
        assert client.is_model_ready("echo")
    finally:
        stop_server(server)
