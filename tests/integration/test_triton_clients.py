"""The real server, called with tritonclient (sync and asyncio): answers equal ONNX Runtime's."""

from __future__ import annotations

import asyncio
import importlib.metadata
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tc
import tritonclient.grpc.aio as tca
from tritonclient.utils import InferenceServerException

from ferry.proto import grpc_service_pb2 as pb
from ferry.proto import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import RunningServer
from tests.models import every_datatype

RNG = np.random.default_rng(0)


def dlrm_inputs(rows: int) -> tuple[np.ndarray, np.ndarray]:
    dense = RNG.standard_normal((rows, 13)).astype(np.float32)
    sparse = RNG.integers(0, 10**9, (rows, 26), dtype=np.int64)
    return dense, sparse


def direct(model_repo: Path, model: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(model_repo / model / "1" / "model.onnx"))
    return session.run(None, feeds)


def ferry_stub(address: str) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))


def infer_inputs(module: object, **arrays: np.ndarray) -> list[tc.InferInput]:
    inputs = []
    for name, array in arrays.items():
        datatype = {np.float32: "FP32", np.int64: "INT64"}[array.dtype.type]
        tensor = module.InferInput(name, list(array.shape), datatype)  # type: ignore[attr-defined]
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def test_server_health_and_metadata(server: RunningServer) -> None:
    client = tc.InferenceServerClient(server.address)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("dlrm")
    assert not client.is_model_ready("broken")
    assert not client.is_model_ready("no_such_model")
    meta = client.get_server_metadata()
    assert meta.name == "triton"  # the name clients check; the version says Ferry
    assert meta.version == importlib.metadata.version("ferry")  # the installed package's
    model = client.get_model_metadata("dlrm")
    assert [(i.name, i.datatype, list(i.shape)) for i in model.inputs] == [
        ("dense", "FP32", [-1, 13]),
        ("sparse", "INT64", [-1, 26]),
    ]
    config = client.get_model_config("dlrm").config
    assert config.max_batch_size == 1024
    assert config.dynamic_batching.max_queue_delay_microseconds == 200


def test_dlrm_matches_onnxruntime(server: RunningServer, model_repo: Path) -> None:
    client = tc.InferenceServerClient(server.address)
    dense, sparse = dlrm_inputs(64)
    result = client.infer("dlrm", infer_inputs(tc, dense=dense, sparse=sparse))
    (expected,) = direct(model_repo, "dlrm", {"dense": dense, "sparse": sparse})
    np.testing.assert_allclose(result.as_numpy("ctr"), expected, rtol=1e-6, atol=1e-6)
    assert result.get_response().model_version == "1"


def test_history_and_echo_match_onnxruntime(server: RunningServer, model_repo: Path) -> None:
    client = tc.InferenceServerClient(server.address)
    history = RNG.integers(0, 50_000, (5, 7), dtype=np.int64)
    user = RNG.standard_normal((5, 16)).astype(np.float32)
    result = client.infer("history", infer_inputs(tc, history=history, user=user))
    (expected,) = direct(model_repo, "history", {"history": history, "user": user})
    np.testing.assert_allclose(result.as_numpy("score"), expected, rtol=1e-6, atol=1e-6)

    x = RNG.standard_normal((3, 11)).astype(np.float32)
    echoed = client.infer("echo", infer_inputs(tc, x=x)).as_numpy("y")
    np.testing.assert_array_equal(echoed, x)


def test_requested_output_subset_and_id_echo(server: RunningServer) -> None:
    client = tc.InferenceServerClient(server.address)
    x = np.ones((2, 4), dtype=np.float32)
    result = client.infer(
        "versioned",
        infer_inputs(tc, x=x),
        outputs=[tc.InferRequestedOutput("y")],
        request_id="req-42",
    )
    assert result.get_response().id == "req-42"
    np.testing.assert_array_equal(result.as_numpy("y"), x + 2.0)  # latest served version is 2


def test_versions_by_policy(server: RunningServer) -> None:
    client = tc.InferenceServerClient(server.address)
    x = np.zeros((1, 4), dtype=np.float32)
    for version, added in (("1", 1.0), ("2", 2.0)):
        out = client.infer("versioned", infer_inputs(tc, x=x), model_version=version)
        np.testing.assert_array_equal(out.as_numpy("y"), x + added)
    with pytest.raises(InferenceServerException) as info:
        client.infer("versioned", infer_inputs(tc, x=x), model_version="3")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert "no version '3'" in info.value.message()


def test_model_without_config_is_derived_from_onnx(server: RunningServer) -> None:
    client = tc.InferenceServerClient(server.address)
    config = client.get_model_config("noconfig").config
    assert config.max_batch_size == 4
    assert [i.name for i in config.input] == ["x"]
    x = np.ones((3, 4), dtype=np.float32)
    out = client.infer("noconfig", infer_inputs(tc, x=x)).as_numpy("y")
    np.testing.assert_array_equal(out, x + 10.0)


def test_unbatched_model(server: RunningServer) -> None:
    client = tc.InferenceServerClient(server.address)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(client.infer("nobatch", infer_inputs(tc, x=x)).as_numpy("y"), x)


def test_every_datatype_round_trips(server: RunningServer) -> None:
    client = tc.InferenceServerClient(server.address)
    arrays = every_datatype()
    inputs = []
    for name, array in arrays.items():
        tensor = tc.InferInput(f"in_{name}", list(array.shape), name)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer("types", inputs)
    for name, array in arrays.items():
        np.testing.assert_array_equal(result.as_numpy(f"out_{name}"), array, err_msg=name)


def test_bf16_travels_as_raw_bit_patterns(server: RunningServer) -> None:
    stub = ferry_stub(server.address)
    bits = np.array([[0x3F80, 0xC000, 0x0000]] * 2, dtype=np.uint16)  # 1.0, -2.0, 0.0
    request = pb.ModelInferRequest(model_name="bf16")
    request.inputs.add(name="in_BF16", datatype="BF16", shape=[2, 3])
    request.raw_input_contents.append(bits.tobytes())
    response = stub.ModelInfer(request)
    assert response.outputs[0].datatype == "BF16"
    assert list(response.outputs[0].shape) == [2, 3]
    assert response.raw_output_contents[0] == bits.tobytes()


def test_bad_input_gets_precise_status(server: RunningServer) -> None:
    client = tc.InferenceServerClient(server.address)

    def status(model: str, inputs: list[tc.InferInput], **kw: object) -> tuple[str, str]:
        with pytest.raises(InferenceServerException) as info:
            client.infer(model, inputs, **kw)
        return info.value.status(), info.value.message()

    dense, sparse = dlrm_inputs(2)
    code, msg = status("no_such_model", infer_inputs(tc, dense=dense))
    assert code == "StatusCode.NOT_FOUND"
    assert "Request for unknown model: 'no_such_model' is not found" in msg  # Triton's words
    code, msg = status("broken", infer_inputs(tc, x=np.zeros((1, 4), np.float32)))
    assert code == "StatusCode.UNAVAILABLE" and "bogus" in msg
    code, msg = status("dlrm", infer_inputs(tc, dense=dense))
    assert code == "StatusCode.INVALID_ARGUMENT" and "missing input(s): 'sparse'" in msg
    code, msg = status("dlrm", infer_inputs(tc, dense=dense, sparse=sparse, extra=dense))
    assert code == "StatusCode.INVALID_ARGUMENT" and "unknown input 'extra'" in msg
    code, msg = status("dlrm", infer_inputs(tc, dense=dense, sparse=sparse.astype(np.float32)))
    assert "input 'sparse': datatype FP32 does not match the model's INT64" in msg
    code, msg = status("dlrm", infer_inputs(tc, dense=dense[:, :12], sparse=sparse))
    assert "input 'dense': shape [2, 12] does not match the model's [-1, 13]" in msg
    code, msg = status("nosplit", infer_inputs(tc, x=np.zeros((9, 4), np.float32)))
    assert "batch size 9 exceeds the model's max_batch_size 8" in msg
    code, msg = status(
        "dlrm",
        infer_inputs(tc, dense=dense, sparse=sparse),
        outputs=[tc.InferRequestedOutput("nope")],
    )
    assert "unknown output 'nope'" in msg
    code, msg = status("dlrm", infer_inputs(tc, dense=dense, sparse=sparse[:1]))
    assert "inputs disagree on the batch size" in msg
    echo_bytes = tc.InferInput("x", [1, 2], "FP32")
    echo_bytes.set_data_from_numpy(np.zeros((1, 2), dtype=np.float32))
    echo_bytes._raw_content = b"\x00" * 7
    code, msg = status("echo", [echo_bytes])
    assert "input 'x': raw contents hold 7 bytes, but shape [1, 2] of FP32 needs 8" in msg
    # the server keeps serving
    ok = client.infer("dlrm", infer_inputs(tc, dense=dense, sparse=sparse))
    assert ok.as_numpy("ctr").shape == (2, 1)


def test_concurrent_requests_are_batched_and_each_gets_its_rows(
    server: RunningServer, model_repo: Path
) -> None:
    async def scenario() -> None:
        client = tca.InferenceServerClient(server.address)
        try:
            before = (await client.get_inference_statistics("dlrm")).model_stats[0]
            rows = [dlrm_inputs(1) for _ in range(64)]
            results = await asyncio.gather(
                *(
                    client.infer("dlrm", infer_inputs(tca, dense=d, sparse=s), request_id=str(i))
                    for i, (d, s) in enumerate(rows)
                )
            )
            dense = np.concatenate([d for d, _ in rows])
            sparse = np.concatenate([s for _, s in rows])
            (expected,) = direct(model_repo, "dlrm", {"dense": dense, "sparse": sparse})
            for i, result in enumerate(results):
                assert result.get_response().id == str(i)
                np.testing.assert_allclose(result.as_numpy("ctr"), expected[i : i + 1], atol=1e-6)
            after = (await client.get_inference_statistics("dlrm")).model_stats[0]
            executions = after.execution_count - before.execution_count
            assert after.inference_count - before.inference_count == 64
            assert executions < 64, "64 concurrent single-row requests never shared a batch"
            sizes = {b.batch_size for b in after.batch_stats}
            assert max(sizes) > 1
        finally:
            await client.close()

    asyncio.run(scenario())


def test_streaming_answers_every_request_and_survives_errors(server: RunningServer) -> None:
    async def scenario() -> None:
        client = tca.InferenceServerClient(server.address)
        try:

            async def requests():  # type: ignore[no-untyped-def]
                for i in range(20):
                    rows = 1 + i % 3
                    x = np.full((rows, 4), float(i), dtype=np.float32)
                    model = "versioned" if i != 7 else "no_such_model"
                    yield {
                        "model_name": model,
                        "inputs": infer_inputs(tca, x=x),
                        "request_id": str(i),
                    }

            seen: dict[str, object] = {}
            async for result, error in client.stream_infer(requests()):
                if error is not None:
                    seen["7"] = error
                else:
                    rid = result.get_response().id
                    i = int(rid)
                    expected = np.full((1 + i % 3, 4), float(i) + 2.0, dtype=np.float32)
                    np.testing.assert_array_equal(result.as_numpy("y"), expected)
                    seen[rid] = True
                if len(seen) == 20:
                    break
            assert set(seen) == {str(i) for i in range(20)}
            assert "unknown model" in str(seen["7"])
        finally:
            await client.close()

    asyncio.run(scenario())


def test_statistics_count_successes_and_failures(server: RunningServer) -> None:
    client = tc.InferenceServerClient(server.address)
    before = client.get_inference_statistics("echo").model_stats[0].inference_stats
    x = np.ones((2, 5), dtype=np.float32)
    for _ in range(3):
        client.infer("echo", infer_inputs(tc, x=x))
    with pytest.raises(InferenceServerException):
        client.infer("echo", infer_inputs(tc, x=x.astype(np.int64)))
    after = client.get_inference_statistics("echo").model_stats[0].inference_stats
    assert after.success.count - before.success.count == 3
    assert after.fail.count - before.fail.count == 1
    assert after.success.ns > before.success.ns


def test_repository_index_reports_failed_models(server: RunningServer) -> None:
    client = tc.InferenceServerClient(server.address)
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index["dlrm"].state == "READY"
    assert index["broken"].state == "UNAVAILABLE"
    assert "field 'bogus' is unknown" in index["broken"].reason
    assert "broken" in server.log()
