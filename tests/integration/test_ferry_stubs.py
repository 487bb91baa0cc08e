"""The real server through Ferry's own stubs: malformed requests, the standard services,
Unix sockets and a clean SIGTERM exit."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ferry.proto import grpc_service_pb2 as pb
from ferry.proto import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import RunningServer, start_server, stop_server


@pytest.fixture
def stub(server: RunningServer) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.address))


def echo_request(rows: int = 1, width: int = 2) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="echo")
    request.inputs.add(name="x", datatype="FP32", shape=[rows, width])
    request.raw_input_contents.append(np.ones((rows, width), np.float32).tobytes())
    return request


def refused(stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    return info.value


def test_typed_contents_are_accepted(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(model_name="echo")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 2])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    response = stub.ModelInfer(request)
    out = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(2, 2)
    np.testing.assert_array_equal(out, [[1, 2], [3, 4]])
    assert response.outputs[0].datatype == "FP32" and list(response.outputs[0].shape) == [2, 2]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.raw_input_contents.append(b"xx"), "raw_input_contents has 2 entries for 1"),
        (
            lambda r: r.inputs[0].contents.fp32_contents.append(1.0),
            "input 'x' has typed contents although raw_input_contents is used",
        ),
        (
            lambda r: (
                r.inputs.add(name="x", datatype="FP32", shape=[1, 2]),
                r.raw_input_contents.append(np.ones(2, np.float32).tobytes()),
            ),
            "input 'x' is given more than once",
        ),
        (lambda r: r.inputs[0].shape.__setitem__(0, 0), "batch size 0"),
        (lambda r: r.inputs[0].shape.__setitem__(1, -3), "does not match the model's [-1, -1]"),
        (lambda r: r.inputs[0].shape.append(1), "shape [1, 2, 1] does not match"),
        (lambda r: setattr(r.inputs[0], "datatype", ""), "datatype (empty) does not match"),
        (
            lambda r: (r.outputs.add(name="y"), r.outputs.add(name="y")),
            "output 'y' is requested more than once",
        ),
    ],
)
def test_malformed_requests_are_invalid_argument(
    stub: pb_grpc.GRPCInferenceServiceStub, mutate: object, message: str
) -> None:
    request = echo_request()
    mutate(request)  # type: ignore[operator]
    error = refused(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.details()
    assert stub.ModelInfer(echo_request()).raw_output_contents  # still serving


def test_typed_contents_with_wrong_count_and_missing_data(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    request = pb.ModelInferRequest(model_name="echo")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 3]).contents.fp32_contents.extend([1])
    error = refused(stub, request)
    assert "contents.fp32_contents has 1 elements, but shape [1, 3] needs 3" in error.details()
    request = pb.ModelInferRequest(model_name="echo")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    error = refused(stub, request)
    assert "input 'x' has no data" in error.details()


def test_bytes_errors(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    def types_request(raw: bytes) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name="types", outputs=[])
        for name in (
            "BOOL",
            "UINT8",
            "UINT16",
            "UINT32",
            "UINT64",
            "INT8",
            "INT16",
            "INT32",
            "INT64",
            "FP16",
            "FP32",
            "FP64",
        ):
            dtype = {
                "BOOL": np.bool_,
                "FP16": np.float16,
                "FP32": np.float32,
                "FP64": np.float64,
            }.get(name, name.lower())
            request.inputs.add(name=f"in_{name}", datatype=name, shape=[1, 3])
            request.raw_input_contents.append(np.zeros((1, 3), dtype=dtype).tobytes())
        request.inputs.add(name="in_BYTES", datatype="BYTES", shape=[1, 3])
        request.raw_input_contents.append(raw)
        return request

    good = b"".join(len(s).to_bytes(4, "little") + s for s in (b"a", b"bc", b""))
    response = stub.ModelInfer(types_request(good))
    index = [o.name for o in response.outputs].index("out_BYTES")
    assert response.raw_output_contents[index] == good
    error = refused(stub, types_request(good[:-3]))
    assert "BYTES raw contents end after 2 of 3 elements" in error.details()
    error = refused(stub, types_request(good + b"zz"))
    assert "2 bytes left over after 3 BYTES elements" in error.details()
    error = refused(stub, types_request((99).to_bytes(4, "little") + b"a"))
    assert "BYTES element 0 claims 99 bytes" in error.details()
    bad = b"".join(len(s).to_bytes(4, "little") + s for s in (b"\xff\xfe", b"b", b"c"))
    error = refused(stub, types_request(bad))
    assert "element 0 is not valid UTF-8" in error.details()


def test_unsupported_rpcs_and_parameters(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.CudaSharedMemoryRegister(pb.CudaSharedMemoryRegisterRequest(name="c"))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "CudaSharedMemoryRegister is not implemented" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:  # the model control mode is none
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="echo"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    request = echo_request()
    request.parameters["sequence_id"].int64_param = 5
    assert refused(stub, request).code() == grpc.StatusCode.UNIMPLEMENTED


def test_statistics_unknown_model_is_not_found(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelStatistics(pb.ModelStatisticsRequest(name="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    every = stub.ModelStatistics(pb.ModelStatisticsRequest())
    assert {"dlrm", "echo", "history"} <= {s.name for s in every.model_stats}


def test_health_and_reflection(server: RunningServer) -> None:
    channel = grpc.insecure_channel(server.address)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.GRPCInferenceService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(
        reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
    )
    names = {s.name for s in replies[0].list_services_response.service}
    assert "inference.GRPCInferenceService" in names
    assert "grpc.health.v1.Health" in names
    replies = list(
        reflect.ServerReflectionInfo(
            iter(
                [
                    reflection_pb2.ServerReflectionRequest(
                        file_containing_symbol="inference.GRPCInferenceService"
                    )
                ]
            )
        )
    )
    assert replies[0].file_descriptor_response.file_descriptor_proto


def test_unix_socket_serves(server: RunningServer) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"unix:{server.unix_socket}"))
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ModelInfer(echo_request()).raw_output_contents


def test_max_message_size_is_enforced(model_repo: Path, tmp_path: Path) -> None:
    small = start_server(model_repo, tmp_path, "--max-message-bytes", "4096")
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(small.address))
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(echo_request(rows=8, width=256))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.ModelInfer(echo_request()).raw_output_contents
    finally:
        assert stop_server(small) == 0
    assert "SIGTERM: shutting down gracefully" in small.log()
    assert "stopped" in small.log()


def test_sigint_drains_and_exits_cleanly(model_repo: Path, tmp_path: Path) -> None:
    import signal

    running = start_server(model_repo, tmp_path)
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(running.address))
    assert stub.ModelInfer(echo_request()).raw_output_contents
    running.process.send_signal(signal.SIGINT)
    assert running.process.wait(timeout=30) == 0
    running.log_file.close()
    assert "SIGINT: shutting down gracefully" in running.log()
    assert not Path(running.unix_socket).exists()
