"""The HTTP/REST front end against the real server, with tritonclient.http (sync and aio) and
plain HTTP: the same models, answers and statuses as gRPC; JSON and binary tensors; every bad
body refused with a precise status and message."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
import tritonclient.http.aio as tha
from tritonclient.utils import InferenceServerException

from tests.conftest import LateAnswer, RunningServer, history_inputs, start_server, stop_server
from tests.models import every_datatype

ARRAYS = every_datatype()


UNKNOWN = "Request for unknown model: 'no_such_model' is not found"  # Triton's words


def host(server: RunningServer) -> str:
    return server.http_url.removeprefix("http://")


def call(server: RunningServer, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:  # fmt: skip
    request = urllib.request.Request(
        server.http_url + path, data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def refused(server: RunningServer, path: str, body: bytes, **headers: str) -> tuple[int, str]:
    status, answer = call(server, "POST", path, body, headers)
    return status, str(json.loads(answer)["error"])


def echo_body(rows: int = 1) -> dict[str, Any]:
    data = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 4],
                        "data": data.tolist()}]}  # fmt: skip


# ---- health, metadata, config, statistics, index -------------------------------------------------


def test_health_and_metadata_answer_as_triton_does(server: RunningServer) -> None:
    client = th.InferenceServerClient(host(server))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("echo")
    assert not client.is_model_ready("no_such_model")
    metadata = client.get_server_metadata()
    assert metadata["name"] == "triton" and "binary_tensor_data" in metadata["extensions"]
    model = client.get_model_metadata("echo")
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}]
    versioned = client.get_model_metadata("versioned", "2")
    assert versioned["versions"] == ["1", "2"]


def test_the_config_is_the_grpc_config_with_numbers_as_numbers(server: RunningServer) -> None:
    over_http = th.InferenceServerClient(host(server)).get_model_config("dlrm")
    over_grpc = tc.InferenceServerClient(server.address).get_model_config("dlrm", as_json=True)
    assert over_http["name"] == over_grpc["config"]["name"] == "dlrm"
    assert isinstance(over_http["max_batch_size"], int) and over_http["max_batch_size"] > 0
    assert all(isinstance(d, int) for i in over_http["input"] for d in i["dims"])
    names = [i["name"] for i in over_grpc["config"]["input"]]
    assert [i["name"] for i in over_http["input"]] == names


def test_statistics_and_the_index_match_grpc(server: RunningServer) -> None:
    client = th.InferenceServerClient(host(server))
    before = client.get_inference_statistics("echo")["model_stats"][0]
    x = th.InferInput("x", [2, 4], "FP32")
    x.set_data_from_numpy(np.ones((2, 4), np.float32))
    client.infer("echo", [x])
    after = client.get_inference_statistics("echo")["model_stats"][0]
    assert after["inference_count"] == before["inference_count"] + 2
    assert after["inference_stats"]["success"]["count"] == (
        before["inference_stats"]["success"]["count"] + 1
    )
    index = {(m["name"], m.get("version", "")) : m["state"] for m in
             client.get_model_repository_index()}  # fmt: skip
    grpc_index = tc.InferenceServerClient(server.address).get_model_repository_index()
    assert index == {(m.name, m.version): m.state for m in grpc_index.models}
    assert index[("broken", "")] == "UNAVAILABLE"


# ---- inference --------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_datatype_round_trips(server: RunningServer, binary: bool) -> None:
    client = th.InferenceServerClient(host(server))
    inputs, outputs = [], []
    for name, array in ARRAYS.items():
        tensor = th.InferInput(f"in_{name}", list(array.shape), name)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
        outputs.append(th.InferRequestedOutput(f"out_{name}", binary_data=binary))
    result = client.infer("types", inputs, outputs=outputs)
    for name, array in ARRAYS.items():
        expected = array
        if name == "BYTES" and not binary:  # JSON carries strings, and the client keeps them so
            expected = np.vectorize(lambda b: b.decode(), otypes=[object])(array)
        np.testing.assert_array_equal(result.as_numpy(f"out_{name}"), expected, err_msg=name)


def test_http_and_grpc_give_the_same_answer(server: RunningServer) -> None:
    rng = np.random.default_rng(3)
    dense = rng.standard_normal((5, 13)).astype(np.float32)
    sparse = rng.integers(0, 1000, (5, 26)).astype(np.int64)
    answers = []
    for module, client in ((th, th.InferenceServerClient(host(server))),
                           (tc, tc.InferenceServerClient(server.address))):  # fmt: skip
        inputs = []
        for name, array, dt in (("dense", dense, "FP32"), ("sparse", sparse, "INT64")):
            tensor = module.InferInput(name, list(array.shape), dt)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        answers.append(client.infer("dlrm", inputs, request_id="same"))
    over_http, over_grpc = answers
    np.testing.assert_array_equal(over_http.as_numpy("score"), over_grpc.as_numpy("score"))
    parameters = over_http.get_response()["parameters"]
    assert parameters["model_sha256"] == over_grpc.get_response().parameters[
        "model_sha256"].string_param  # fmt: skip
    assert over_http.get_response()["id"] == "same"


@pytest.mark.asyncio
async def test_the_aio_client_with_compression(server: RunningServer) -> None:
    client = tha.InferenceServerClient(host(server))
    try:
        x = np.arange(64, dtype=np.float32).reshape(4, 16)
        tensor = tha.InferInput("x", [4, 16], "FP32")
        tensor.set_data_from_numpy(x)
        results = await asyncio.gather(*(
            client.infer("echo", [tensor], request_compression_algorithm=algorithm,
                         response_compression_algorithm=algorithm)
            for algorithm in (None, "gzip", "deflate")
        ))  # fmt: skip
        for result in results:
            np.testing.assert_array_equal(result.as_numpy("y"), x)
    finally:
        await client.close()


def test_an_unbatched_model_and_a_named_version(server: RunningServer) -> None:
    client = th.InferenceServerClient(host(server))
    x = th.InferInput("x", [2, 3], "FP32")
    x.set_data_from_numpy(np.zeros((2, 3), np.float32))
    assert client.infer("nobatch", [x]).as_numpy("y").shape == (2, 3)
    y = th.InferInput("x", [1, 4], "FP32")
    y.set_data_from_numpy(np.zeros((1, 4), np.float32))
    assert client.infer("versioned", [y], model_version="1").as_numpy("y")[0, 0] == 1.0
    assert client.infer("versioned", [y], model_version="2").as_numpy("y")[0, 0] == 2.0


def test_requests_leave_their_line_in_the_access_log_and_metrics(server: RunningServer) -> None:
    status, _ = call(server, "POST", "/v2/models/echo/infer",
                     json.dumps({**echo_body(), "id": "http-logged"}).encode())  # fmt: skip
    assert status == 200
    log = Path(server.log_path).parent / "access.log"
    deadline = time.monotonic() + 5
    while '"http-logged"' not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(x for x in log.read_text().splitlines() if '"http-logged"' in x)
    assert json.loads(line)["status"] == "OK"
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        scrape = response.read().decode()
    assert re.search(r'nv_inference_request_success\{model="echo",version="1"\} [1-9]', scrape)


# ---- bad input -----------------------------------------------------------------------------------


def binary_body(size: int, data: bytes) -> tuple[bytes, dict[str, str]]:
    """An echo request claiming `size` binary bytes for its input, followed by `data`."""
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 1],
              "parameters": {"binary_data_size": size}}  # fmt: skip
    header = json.dumps({"inputs": [tensor]}).encode()
    return header + data, {"Inference-Header-Content-Length": str(len(header))}



@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"{not json", {}, 400, "not valid JSON"),
        (b"[1, 2]", {}, 400, "must be a JSON object"),
        (b'{"inputs": []}', {}, 400, "'inputs' must be a non-empty list"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4]}]}', {}, 400,
         "has no data"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2]}]}',
         {}, 400, "'data' holds 2 elements, but shape [1, 4] needs 4"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, -4], "data": []}]}', {},
         400, "'shape' must be a list of integers >= 0"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": ["a", 1]}]}',
         {}, 400, "FP32 data must be numbers"),
        (*binary_body(8, b"\0" * 4), 400, "binary_data_size 8 runs past the body's binary data"),
        (*binary_body(4, b"\0" * 9), 400, "5 bytes of binary data are left over"),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "x"}, 400,
         "Inference-Header-Content-Length must be an integer"),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "999"}, 400,
         "Inference-Header-Content-Length is 999, but the body holds 14 bytes"),
        (b'{"inputs": [{"name": "y", "datatype": "FP32", "shape": [1, 1], "data": [1]}]}', {},
         400, "unknown input 'y' (the model's inputs: x)"),
        (b'{"inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 1], "data": [1]}]}', {},
         400, "datatype INT64 does not match the model's FP32"),
        (json.dumps({**echo_body(), "outputs": [{"name": "z"}]}).encode(), {}, 400,
         "unknown output 'z'"),
        (json.dumps({**echo_body(), "parameters": {"sequence_id": 3}}).encode(), {}, 501,
         "sequence batching is not supported"),
    ],
)
def test_a_bad_body_gets_a_precise_status(
    server: RunningServer, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    got_status, got_message = refused(server, "/v2/models/echo/infer", body, **headers)
    assert (got_status, message in got_message) == (status, True), got_message


def test_a_value_out_of_range_is_refused_not_wrapped(server: RunningServer) -> None:
    body = {"inputs": [{"name": f"in_{n}", "datatype": n, "shape": [1, 3],
                        "data": [False] * 3 if n == "BOOL" else ["", "", ""] if n == "BYTES"
                        else [0, 0, 0]} for n in ARRAYS]}  # fmt: skip
    assert body["inputs"][5]["datatype"] == "INT8"
    body["inputs"][5]["data"] = [0, 0, 128]
    status, message = refused(server, "/v2/models/types/infer", json.dumps(body).encode())
    assert status == 400 and "a value lies outside the range of INT8" in message


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("POST", "/v2/models/no_such_model/infer", 404, UNKNOWN),
        ("GET", "/v2/models/no_such_model", 404, UNKNOWN),
        ("GET", "/v2/models/versioned/versions/7/config", 404, "version"),
        ("GET", "/v2/models/versioned/versions/x/config", 404, "has no version 'x'"),
        ("GET", "/v2/nowhere", 404, "no such path: /v2/nowhere"),
        ("DELETE", "/v2/models/echo", 405, "method not allowed"),
        ("POST", "/v2/cudasharedmemory/region/r/register", 501, "CUDA shared memory"),
        ("POST", "/v2/systemsharedmemory/region/r/register", 400, "'key' (a string)"),
        ("GET", "/v2/systemsharedmemory/region/r/status", 400, "Unable to find shared memory"),
        ("POST", "/v2/repository/models/echo/load", 503, "not allowed in model control mode"),
        ("GET", "/v2/models/broken", 503, "broken"),
    ],
)
def test_wrong_paths_and_unserved_features_get_precise_statuses(
    server: RunningServer, method: str, path: str, status: int, message: str
) -> None:
    got, body = call(server, method, path, b"{}" if method == "POST" else None)
    assert got == status, body
    assert message in json.loads(body)["error"]


def test_tritonclient_raises_with_the_status_and_message(server: RunningServer) -> None:
    client = th.InferenceServerClient(host(server))
    x = th.InferInput("x", [1, 5], "FP32")
    x.set_data_from_numpy(np.zeros((1, 5), np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("lookup", [x])
    assert info.value.status() == "400" and "unknown input 'x'" in str(info.value.message())


def test_a_body_past_the_message_limit_is_refused(model_repo: Path, tmp_path: Path) -> None:
    own = start_server(model_repo, tmp_path, "--max-message-bytes", "4096")
    try:
        body = json.dumps(echo_body(rows=512)).encode()
        status, message = refused(own, "/v2/models/echo/infer", body)
        assert status == 413 and "largest message" in message
        status, _ = call(own, "POST", "/v2/models/echo/infer", json.dumps(echo_body()).encode())
        assert status == 200  # and the server goes on serving
    finally:
        stop_server(own)


def test_draining_refuses_new_http_requests_with_503(model_repo: Path, tmp_path: Path) -> None:
    own = start_server(model_repo, tmp_path)
    try:
        client = tc.InferenceServerClient(own.address)
        late = LateAnswer()
        client.async_infer("history_padded", history_inputs(), late)
        time.sleep(0.1)  # accepted, waiting out its 300 ms batch delay
        own.process.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        status, message = refused(own, "/v2/models/echo/infer", json.dumps(echo_body()).encode())
        assert status == 503 and "shutting down" in message
        assert call(own, "GET", "/v2/health/ready")[0] == 400
        assert own.process.wait(timeout=30) == 0
        assert len(late.answers) == 1 and late.answers[0][1] is None  # the accepted one: answered
    finally:
        if own.process.poll() is None:
            stop_server(own)
        own.log_file.close()


def test_workers_share_the_http_port(model_repo: Path, tmp_path: Path) -> None:
    own = start_server(model_repo, tmp_path, workers=2)
    try:
        text = own.log()
        ports = set(re.findall(r"HTTP on http://[\d.]+:(\d+)", text))
        assert len(ports) == 1 and len(re.findall("HTTP on ", text)) == 2
        for _ in range(20):
            status, _ = call(own, "POST", "/v2/models/echo/infer", json.dumps(echo_body()).encode())
            assert status == 200
    finally:
        stop_server(own)


def test_the_config_carries_the_defaults_triton_fills_in(server: RunningServer) -> None:
    """A model without config.pbtxt: the completed config names its backend, file, version
    policy and instance group, as Triton's would."""
    config = th.InferenceServerClient(host(server)).get_model_config("noconfig")
    assert config["backend"] == "onnxruntime" and config["platform"] == "onnxruntime_onnx"
    assert config["default_model_filename"] == "model.onnx"
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    (group,) = config["instance_group"]
    assert (group["name"], group["kind"], group["count"]) == ("noconfig_0", "KIND_CPU", 1)


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v2/repository/index", b"{not json", "not valid JSON"),
        ("/v2/repository/index", b'{"ready": "yes"}', "'ready' is true or false"),
        ("/v2/repository/index", b"[true]", "must be a JSON object"),
        ("/v2/logging", b'{"log_info": [1]}', "a boolean, number or string"),
        ("/v2/logging", b'{"log_verbose_level": -1}', "log_verbose_level must be an integer"),
        ("/v2/trace/setting", b'{"trace_rate": 5}', "a string or strings"),
        ("/v2/systemsharedmemory/region/r/register", b'{"key": "/k", "byte_size": true}',
         "'byte_size'"),
    ],
)
def test_bad_bodies_on_the_other_paths_are_refused_and_serving_goes_on(
    server: RunningServer, path: str, body: bytes, message: str
) -> None:
    status, error = refused(server, path, body)
    assert status == 400 and message in error, error
    status, _ = call(server, "POST", "/v2/models/echo/infer", json.dumps(echo_body()).encode())
    assert status == 200
