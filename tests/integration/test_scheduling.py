"""The scheduler through the real server: priorities, queue timeouts, deadlines, byte bounds,
profiles and padding, oversized requests and ordering, with tritonclient and Ferry's stubs.

The test models (tests/models.py) hold requests in the queue with a long max_queue_delay, so
every timing below has a wide margin (tens to hundreds of milliseconds).
"""

from __future__ import annotations

import asyncio
import queue
import time
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


def x_input(module: object, array: np.ndarray) -> list[tc.InferInput]:
    tensor = module.InferInput("x", list(array.shape), "FP32")  # type: ignore[attr-defined]
    tensor.set_data_from_numpy(array)
    return [tensor]


def failure(call: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()  # type: ignore[operator]
    return info.value


def stats(client: tc.InferenceServerClient, model: str) -> object:
    return client.get_inference_statistics(model).model_stats[0]


def test_queue_timeout_rejects_and_a_request_may_only_shorten_it(server: RunningServer) -> None:
    client = tc.InferenceServerClient(server.address)
    x = np.ones((1, 4), np.float32)
    t0 = time.monotonic()
    error = failure(lambda: client.infer("timeouts", x_input(tc, x)))
    waited = time.monotonic() - t0
    assert error.status() == "StatusCode.UNAVAILABLE"
    assert error.message() == "Request timeout expired"
    assert 0.09 < waited < 0.35  # the policy's 100 ms, not the 400 ms batching delay
    t0 = time.monotonic()
    error = failure(lambda: client.infer("timeouts", x_input(tc, x), timeout=20_000))
    assert error.message() == "Request timeout expired"
    assert time.monotonic() - t0 < 0.09  # its own 20 ms
    # A full batch leaves at once, long before any timeout.
    result = client.infer("timeouts", x_input(tc, np.ones((8, 4), np.float32)))
    np.testing.assert_array_equal(result.as_numpy("y"), np.ones((8, 4), np.float32))
    assert stats(client, "timeouts").execution_count == 1  # rejected requests never ran


def test_delay_action_keeps_a_late_request_and_serves_it(server: RunningServer) -> None:
    client = tc.InferenceServerClient(server.address)
    x = np.full((2, 4), 3.0, np.float32)
    result = client.infer("delayed", x_input(tc, x))
    np.testing.assert_array_equal(result.as_numpy("y"), x)


def test_client_deadline_is_never_computed(server: RunningServer) -> None:
    client = tc.InferenceServerClient(server.address)
    before = stats(client, "delayed").inference_count
    error = failure(
        lambda: client.infer(
            "delayed", x_input(tc, np.ones((1, 4), np.float32)), client_timeout=0.1
        )
    )
    assert error.status() == "StatusCode.DEADLINE_EXCEEDED"
    time.sleep(0.5)  # past the model's batching delay: had it been kept, it would have run
    assert stats(client, "delayed").inference_count == before


def test_higher_priority_overtakes_on_one_stream(server: RunningServer) -> None:
    client = tc.InferenceServerClient(server.address)
    answers: queue.Queue[str] = queue.Queue()
    client.start_stream(
        callback=lambda result, error: answers.put(str(error or result.get_response().id))
    )
    try:
        client.async_stream_infer(
            "ranked", x_input(tc, np.ones((1, 4), np.float32)), request_id="low", priority=2
        )
        time.sleep(0.05)
        client.async_stream_infer(
            "ranked", x_input(tc, np.ones((1, 8), np.float32)), request_id="high", priority=1
        )
        client.async_stream_infer(
            "ranked", x_input(tc, np.ones((1, 4), np.float32)), request_id="bad", priority=5
        )
        got = [answers.get(timeout=10) for _ in range(3)]
    finally:
        client.stop_stream()
    # The bad priority is answered at once, on the same stream, which stays open.
    assert "priority 5 is outside the model's levels 1..2" in got[0]
    assert got[1:] == ["high", "low"]


def test_queued_bytes_are_bounded(server: RunningServer) -> None:
    async def scenario() -> None:
        client = tca.InferenceServerClient(server.address)
        try:
            x = np.ones((1, 16), np.float32)  # 64 bytes; the model's bound is 100
            first = asyncio.create_task(client.infer("tinybytes", x_input(tca, x)))
            await asyncio.sleep(0.05)
            with pytest.raises(InferenceServerException) as info:
                await client.infer("tinybytes", x_input(tca, x))
            assert info.value.status() == "StatusCode.UNAVAILABLE"
            assert "Exceeds maximum queue bytes" in info.value.message()
            assert "limit of 100" in info.value.message()
            result = await first
            np.testing.assert_array_equal(result.as_numpy("y"), x)
            again = await client.infer("tinybytes", x_input(tca, x))  # freed again
            np.testing.assert_array_equal(again.as_numpy("y"), x)
        finally:
            await client.close()

    asyncio.run(scenario())


def test_oversized_request_is_split_and_answered_whole(
    server: RunningServer, model_repo: Path
) -> None:
    client = tc.InferenceServerClient(server.address)
    rng = np.random.default_rng(5)
    dense = rng.standard_normal((2500, 13)).astype(np.float32)
    sparse = rng.integers(0, 10**6, (2500, 26), dtype=np.int64)
    inputs = [
        tc.InferInput("dense", [2500, 13], "FP32"),
        tc.InferInput("sparse", [2500, 26], "INT64"),
    ]
    inputs[0].set_data_from_numpy(dense)
    inputs[1].set_data_from_numpy(sparse)
    result = client.infer("dlrm", inputs)
    session = ort.InferenceSession(str(model_repo / "dlrm" / "1" / "model.onnx"))
    (expected,) = session.run(None, {"dense": dense, "sparse": sparse})
    np.testing.assert_allclose(result.as_numpy("ctr"), expected, rtol=1e-5, atol=1e-6)
    error = failure(lambda: client.infer("nosplit", x_input(tc, np.ones((9, 4), np.float32))))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"


def test_padded_batch_answers_each_request_as_if_alone(
    server: RunningServer, model_repo: Path
) -> None:
    lengths = [1, 7, 64, 200, 512, 33]
    rng = np.random.default_rng(9)
    requests = []
    for n in lengths:
        history = rng.integers(1, 10_000, (2, n), dtype=np.int64)
        user = rng.standard_normal((2, 16)).astype(np.float32)
        requests.append((history, user))
    session = ort.InferenceSession(str(model_repo / "history" / "1" / "model.onnx"))

    async def scenario() -> list[np.ndarray]:
        client = tca.InferenceServerClient(server.address)
        try:
            calls = []
            for history, user in requests:
                inputs = [
                    tca.InferInput("history", list(history.shape), "INT64"),
                    tca.InferInput("user", list(user.shape), "FP32"),
                ]
                inputs[0].set_data_from_numpy(history)
                inputs[1].set_data_from_numpy(user)
                calls.append(client.infer("history_padded", inputs))
            return [r.as_numpy("score") for r in await asyncio.gather(*calls)]
        finally:
            await client.close()

    scores = asyncio.run(scenario())
    for (history, user), score in zip(requests, scores, strict=True):
        (alone,) = session.run(None, {"history": history, "user": user})
        np.testing.assert_allclose(score, alone, rtol=1e-5, atol=1e-6)
    model = stats(tc.InferenceServerClient(server.address), "history_padded")
    assert model.execution_count == 1  # all six shared one padded batch
    assert model.inference_count == 12


def test_a_shape_outside_every_profile_is_refused(server: RunningServer) -> None:
    client = tc.InferenceServerClient(server.address)
    inputs = [tc.InferInput("history", [1, 600], "INT64"), tc.InferInput("user", [1, 16], "FP32")]
    inputs[0].set_data_from_numpy(np.ones((1, 600), np.int64))
    inputs[1].set_data_from_numpy(np.zeros((1, 16), np.float32))
    error = failure(lambda: client.infer("history", inputs))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "fit no optimization profile" in error.message()
    assert "profile 0 (history [1]..[64])" in error.message()
    assert "profile 1 (history [1]..[512])" in error.message()


def test_preserve_ordering_answers_a_stream_in_order(server: RunningServer) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.address))
    sizes = [4, 1, 3, 1, 2, 4, 1, 1, 3, 2] * 3

    def requests():  # type: ignore[no-untyped-def]
        for i, rows in enumerate(sizes):
            request = pb.ModelInferRequest(model_name="ordered", id=str(i))
            request.inputs.add(name="x", datatype="FP32", shape=[rows, 64])
            request.raw_input_contents.append(np.full((rows, 64), i, np.float32).tobytes())
            yield request

    ids = [r.infer_response.id for r in stub.ModelStreamInfer(requests(), timeout=30)]
    assert ids == [str(i) for i in range(len(sizes))]


def test_scheduling_parameters_are_checked(server: RunningServer) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.address))

    def request(**params: pb.InferParameter) -> pb.ModelInferRequest:
        message = pb.ModelInferRequest(model_name="ranked")
        message.inputs.add(name="x", datatype="FP32", shape=[4, 2])
        message.raw_input_contents.append(np.zeros((4, 2), np.float32).tobytes())
        for key, value in params.items():
            message.parameters[key].CopyFrom(value)
        return message

    # int64 priorities are accepted as well as tritonclient's uint64 (a full batch: no wait).
    answer = stub.ModelInfer(request(priority=pb.InferParameter(int64_param=1)))
    assert list(answer.outputs[0].shape) == [4, 2]
    for params, message in (
        ({"priority": pb.InferParameter(string_param="high")}, "must be an integer"),
        ({"timeout": pb.InferParameter(int64_param=-5)}, "must be >= 0"),
        ({"priority": pb.InferParameter(uint64_param=3)}, "outside the model's levels 1..2"),
    ):
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request(**params))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in str(info.value.details())


def test_hostile_scheduling_input_is_refused_and_others_keep_being_served(
    server: RunningServer,
) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.address))

    def add(model: str, rows: int, **params: pb.InferParameter) -> pb.ModelInferRequest:
        message = pb.ModelInferRequest(model_name=model)
        message.inputs.add(name="x", datatype="FP32", shape=[rows, 4])
        message.raw_input_contents.append(np.zeros((rows, 4), np.float32).tobytes())
        for key, value in params.items():
            message.parameters[key].CopyFrom(value)
        return message

    # The largest timeout a client can send: only the policy's own 100 ms can apply, and a
    # full batch leaves at once anyway.
    huge = pb.InferParameter(uint64_param=2**64 - 1)
    answer = stub.ModelInfer(add("timeouts", 8, timeout=huge), timeout=10)
    assert list(answer.outputs[0].shape) == [8, 4]
    with pytest.raises(grpc.RpcError) as info:  # the largest priority
        stub.ModelInfer(add("ranked", 4, priority=huge), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # An empty history fits no profile of `history` (1..64, 1..512).
    empty = pb.ModelInferRequest(model_name="history")
    empty.inputs.add(name="history", datatype="INT64", shape=[1, 0])
    empty.inputs.add(name="user", datatype="FP32", shape=[1, 16])
    empty.raw_input_contents.extend([b"", np.zeros((1, 16), np.float32).tobytes()])
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(empty, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "fit no optimization profile" in str(info.value.details())
    # Rows far past max_batch_size on a model that refuses to split, in one message.
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(add("nosplit", 100_000), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The server is unharmed: an ordinary request on each model still gets its answer.
    assert list(stub.ModelInfer(add("ranked", 4), timeout=10).outputs[0].shape) == [4, 4]
    assert list(stub.ModelInfer(add("nosplit", 8), timeout=10).outputs[0].shape) == [8, 4]


@pytest.mark.asyncio
async def test_a_model_with_a_reserved_instance_answers_every_level(server: RunningServer) -> None:
    client = tca.InferenceServerClient(server.address)
    try:
        arrays = [np.full((1, 4), float(i), np.float32) for i in range(24)]
        results = await asyncio.gather(
            *(
                client.infer("reserved", x_input(tca, a), priority=1 + i % 2)
                for i, a in enumerate(arrays)
            )
        )
        for array, result in zip(arrays, results, strict=True):
            np.testing.assert_array_equal(result.as_numpy("y"), array)
        index = {
            m["name"]: m for m in (await client.get_model_repository_index(as_json=True))["models"]
        }
        assert index["reserved"]["state"] == "READY"
        assert index["overreserved"]["state"] == "UNAVAILABLE"
        assert (
            "'ferry.reserved_instances' is 1, but profile 0 has 1 instance(s)"
            in (index["overreserved"]["reason"])
        )
    finally:
        await client.close()
