"""Model control against the real server: explicit loads and unloads over gRPC and HTTP, config
and file overrides, reloads under load that drop nothing, an unload that lets its last requests
finish, a failed reload that keeps the old version serving, and poll mode following the
repository's folders."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from tests.conftest import LateAnswer, RunningServer, history_inputs, start_server, stop_server


@pytest.fixture
def explicit(model_repo: Path, tmp_path: Path) -> Iterator[RunningServer]:
    server = start_server(
        model_repo, tmp_path, "--model-control-mode", "explicit", "--load-model", "simple"
    )
    yield server
    stop_server(server)


def simple_inputs(offset: int = 0) -> list[tc.InferInput]:
    inputs = [tc.InferInput("INPUT0", [1, 16], "INT32"), tc.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(np.arange(16, dtype=np.int32)[None] + offset)
    inputs[1].set_data_from_numpy(np.ones((1, 16), np.int32))
    return inputs


def failure(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def index(client: tc.InferenceServerClient) -> dict[str, tuple[str, str]]:
    return {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}


def test_explicit_mode_loads_only_what_it_is_told(explicit: RunningServer) -> None:
    client = tc.InferenceServerClient(explicit.address)
    states = index(client)
    assert states["simple"][0] == "READY"
    assert states["echo"] == ("UNAVAILABLE", "not loaded")
    x = tc.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), np.float32))
    assert failure(lambda: client.infer("echo", [x])).status() == "StatusCode.UNAVAILABLE"
    client.load_model("echo")
    assert client.is_model_ready("echo")
    np.testing.assert_array_equal(client.infer("echo", [x]).as_numpy("y"), np.ones((1, 4)))
    client.unload_model("echo")
    assert not client.is_model_ready("echo")
    assert index(client)["echo"] == ("UNAVAILABLE", "unloaded")
    error = failure(lambda: client.infer("echo", [x]))
    assert error.status() == "StatusCode.UNAVAILABLE" and "unloaded" in str(error.message())


def test_a_config_override_replaces_config_pbtxt(explicit: RunningServer) -> None:
    client = tc.InferenceServerClient(explicit.address)
    client.load_model("simple", config=json.dumps({"max_batch_size": 16}))
    assert client.get_model_config("simple").config.max_batch_size == 16
    inputs = [tc.InferInput(n, [12, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(np.ones((12, 16), np.int32))
    assert client.infer("simple", inputs).as_numpy("OUTPUT0").shape == (12, 16)


@pytest.mark.parametrize(
    ("config", "files", "status", "message"),
    [
        ('{"max_batch_size": ', {}, "StatusCode.INTERNAL", "failed to load 'simple'"),
        ('{"sequence_batching": {}}', {}, "StatusCode.INTERNAL", "failed to load 'simple'"),
        (None, {"file:1/model.onnx": b"x"}, "StatusCode.INVALID_ARGUMENT",
         "need a config sent with them"),
        ("{}", {"file:../escape": b"x"}, "StatusCode.INVALID_ARGUMENT",
         "must be a path inside the model folder"),
        ("{}", {"file:" + "A" * 256: b"x"}, "StatusCode.INTERNAL",
         "failed to poll from model repository"),
    ],
)
def test_bad_load_requests_are_refused_and_the_model_serves_on(
    explicit: RunningServer, config: str | None, files: dict[str, bytes], status: str, message: str
) -> None:
    client = tc.InferenceServerClient(explicit.address)
    error = failure(lambda: client.load_model("simple", config=config, files=files or None))
    assert error.status() == status and message in str(error.message()), error.message()
    assert client.infer("simple", simple_inputs()).as_numpy("OUTPUT0") is not None
    assert client.is_server_live()


def test_loading_an_unknown_model_says_so(explicit: RunningServer) -> None:
    client = tc.InferenceServerClient(explicit.address)
    error = failure(lambda: client.load_model("no_such_model"))
    assert "failed to load 'no_such_model'" in str(error.message())
    assert "no_such_model" not in index(client)


def test_a_failed_reload_leaves_the_old_version_serving(explicit: RunningServer) -> None:
    client = tc.InferenceServerClient(explicit.address)
    bad = {"max_batch_size": 8, "input": [{"name": "INPUT0", "data_type": "TYPE_INT32",
                                            "dims": [5]}]}  # fmt: skip
    error = failure(lambda: client.load_model("simple", config=json.dumps(bad)))
    assert "do not fit the model's shape" in str(error.message())
    state, reason = index(client)["simple"]
    assert state == "READY" and reason.startswith("reload failed, the loaded versions serve on")
    out = client.infer("simple", simple_inputs()).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(out, np.arange(16)[None] + 1)


def test_a_model_sent_with_its_files_loads_and_serves(
    explicit: RunningServer, model_repo: Path
) -> None:
    """Over HTTP, the file travels base64-encoded, as Triton's HTTP API takes it."""
    onnx_bytes = (model_repo / "echo" / "1" / "model.onnx").read_bytes()
    body = {"parameters": {"config": json.dumps({"max_batch_size": 4}),
                           "file:1/model.onnx": base64.b64encode(onnx_bytes).decode()}}  # fmt: skip
    request = urllib.request.Request(
        explicit.http_url + "/v2/repository/models/sent_echo/load",
        data=json.dumps(body).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    client = tc.InferenceServerClient(explicit.address)
    x = tc.InferInput("x", [2, 3], "FP32")
    x.set_data_from_numpy(np.full((2, 3), 7, np.float32))
    np.testing.assert_array_equal(client.infer("sent_echo", [x]).as_numpy("y"), np.full((2, 3), 7))
    unload = urllib.request.Request(
        explicit.http_url + "/v2/repository/models/sent_echo/unload", data=b"{}", method="POST"
    )
    with urllib.request.urlopen(unload, timeout=30) as response:
        assert response.status == 200
    assert not client.is_model_ready("sent_echo")


def test_unloading_a_model_in_use_lets_its_requests_finish(explicit: RunningServer) -> None:
    """`history_padded` holds its batch 300 ms: the unload waits for the request it holds."""
    client = tc.InferenceServerClient(explicit.address)
    client.load_model("history_padded")
    late = LateAnswer()
    client.async_infer("history_padded", history_inputs(), late)
    time.sleep(0.1)
    client.unload_model("history_padded")
    result, error = late.wait(10)
    assert error is None and result.as_numpy("score").shape == (1, 1)
    assert not client.is_model_ready("history_padded")


def test_reloads_under_load_drop_nothing(explicit: RunningServer) -> None:
    client = tc.InferenceServerClient(explicit.address)
    stop = threading.Event()
    outcomes: list[str] = []

    def sender(offset: int) -> None:
        own = tc.InferenceServerClient(explicit.address)
        while not stop.is_set():
            try:
                out = own.infer("simple", simple_inputs(offset)).as_numpy("OUTPUT0")
                ok = np.array_equal(out, np.arange(16)[None] + offset + 1)
                outcomes.append("OK" if ok else "WRONG")
            except InferenceServerException as exc:
                outcomes.append(str(exc.status()))

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        for n in range(6):
            time.sleep(0.2)
            client.load_model("simple", config=json.dumps({"max_batch_size": 8 + 8 * (n % 2)}))
        time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert outcomes and set(outcomes) == {"OK"}, {o: outcomes.count(o) for o in set(outcomes)}


def test_load_requests_are_refused_unless_the_mode_is_explicit(server: RunningServer) -> None:
    client = tc.InferenceServerClient(server.address)
    error = failure(lambda: client.load_model("echo"))
    assert error.status() == "StatusCode.UNAVAILABLE"
    assert "--model-control-mode explicit" in str(error.message())
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(
            server.http_url + "/v2/repository/models/echo/unload", data=b"", method="POST"
        ), timeout=10)  # fmt: skip
    assert info.value.code == 503
    info.value.close()


def test_poll_mode_follows_the_repository(model_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(model_repo / "simple", repo / "simple")
    server = start_server(repo, tmp_path, "--model-control-mode", "poll",
                          "--repository-poll-secs", "0.2")  # fmt: skip
    try:
        client = tc.InferenceServerClient(server.address)
        assert set(index(client)) == {"simple"}

        def until(check: Any) -> None:
            deadline = time.monotonic() + 20
            while not check():
                assert time.monotonic() < deadline, index(client)
                time.sleep(0.1)

        shutil.copytree(model_repo / "echo", repo / "echo")  # added
        until(lambda: client.is_model_ready("echo"))
        config = repo / "simple" / "config.pbtxt"
        config.write_text(config.read_text().replace("max_batch_size: 8", "max_batch_size: 4"))
        until(lambda: client.get_model_config("simple").config.max_batch_size == 4)  # changed
        shutil.rmtree(repo / "echo")  # removed
        until(lambda: not client.is_model_ready("echo"))
        assert client.infer("simple", simple_inputs()).as_numpy("OUTPUT0") is not None
    finally:
        stop_server(server)


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/repository/models/simple/load", b'{"parameters": []}', 400,
         "'parameters' must be a JSON object"),
        ("/v2/repository/models/simple/load",
         b'{"parameters": {"config": "{}", "file:1/model.onnx": "not base64!"}}', 400,
         "is not valid base64"),
        ("/v2/repository/models/simple/load",
         b'{"parameters": {"config": "{}", "file:1/model.onnx": 7}}', 400, "must be base64 text"),
        ("/v2/repository/models/simple/load", b"{nope", 400, "not valid JSON"),
        ("/v2/repository/models/no_such_model/unload", b"", 404, "no such model"),
    ],
)
def test_bad_http_load_and_unload_requests_are_refused(
    explicit: RunningServer, path: str, body: bytes, status: int, message: str
) -> None:
    request = urllib.request.Request(explicit.http_url + path, data=body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    with info.value as error:
        assert error.code == status and message in json.loads(error.read())["error"]
    client = tc.InferenceServerClient(explicit.address)
    assert client.infer("simple", simple_inputs()).as_numpy("OUTPUT0") is not None
