"""A KIND_GPU model through the real server (marker `gpu`): the example dlrm on two GPU
instances, called concurrently over gRPC, answers as ONNX Runtime on the CPU does."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from ferry.engines.cuda.devices import discover
from ferry.proto import grpc_service_pb2 as pb
from ferry.proto import grpc_service_pb2_grpc as pb_grpc
from ferry.server.example_repo import write_example_repo
from tests.conftest import reaped, start_server, stop_server

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("graphs", [False, True], ids=["plain", "cuda-graphs"])
def test_kind_gpu_model_served_over_grpc_equals_the_cpu(tmp_path: Path, graphs: bool) -> None:
    found = discover()
    if not found.devices:
        pytest.skip(f"no GPU: {found.reason}")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without CUDAExecutionProvider")
    repo = tmp_path / "models"
    write_example_repo(repo)
    config = repo / "dlrm" / "config.pbtxt"
    text = config.read_text().replace("count: 1 kind: KIND_CPU", "count: 2 kind: KIND_GPU")
    if graphs:
        text += "optimization { cuda { graphs: true } }\n"
    config.write_text(text)
    server = start_server(repo, tmp_path)
    try:
        assert "model dlrm version 1 ready" in server.log() and "on gpu:0" in server.log()
        rng = np.random.default_rng(4)
        batches = [
            (
                rng.standard_normal((rows, 13)).astype(np.float32),
                rng.integers(0, 10**6, (rows, 26)).astype(np.int64),
            )
            for rows in (1, 5, 64, 300, 2, 1024, 17, 128) * 2
        ]
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            calls = []
            for dense, sparse in batches:
                request = pb.ModelInferRequest(model_name="dlrm")
                request.inputs.add(name="dense", datatype="FP32", shape=list(dense.shape))
                request.inputs.add(name="sparse", datatype="INT64", shape=list(sparse.shape))
                request.raw_input_contents.extend([dense.tobytes(), sparse.tobytes()])
                calls.append(stub.ModelInfer.future(request))
            answers = [c.result(timeout=60) for c in calls]
            stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="dlrm")).model_stats[0]
        cpu = ort.InferenceSession(
            str(repo / "dlrm" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        for (dense, sparse), answer in zip(batches, answers, strict=True):
            got = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(-1, 1)
            (expected,) = cpu.run(None, {"dense": dense, "sparse": sparse})
            assert float(np.max(np.abs(got - expected))) <= 1e-3
        assert stats.inference_count == sum(d.shape[0] for d, _ in batches)
    finally:
        stop_server(server)


def test_one_worker_per_gpu_sees_only_its_device(tmp_path: Path) -> None:
    import re
    import signal
    import subprocess
    import sys
    import time

    found = discover()
    if not found.devices:
        pytest.skip(f"no GPU: {found.reason}")
    repo = tmp_path / "models"
    write_example_repo(repo)
    config = repo / "dlrm" / "config.pbtxt"
    config.write_text(
        config.read_text().replace("count: 1 kind: KIND_CPU", "count: 1 kind: KIND_GPU")
    )
    log = tmp_path / "workers.log"
    root = Path(__file__).resolve().parents[2]
    with log.open("w") as sink:
        command = [sys.executable, "-m", "ferry", "serve", "--model-repository", str(repo)]
        command += ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]
        command += ["--workers", "gpu"]
        supervisor = subprocess.Popen(command, cwd=root, stdout=sink, stderr=subprocess.STDOUT)
        with reaped(supervisor):
            deadline = time.monotonic() + 120
            while len(re.findall(r"serving on ", log.read_text())) < len(found.devices):
                assert supervisor.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            text = log.read_text()
            assert text.count("model dlrm version 1 ready") == len(found.devices)
            assert "on gpu:0" in text  # each worker's one visible device is CUDA device 0
            address = re.findall(r"serving on (\S+)", text)[0]
            dense = np.ones((4, 13), np.float32)
            sparse = np.ones((4, 26), np.int64)
            request = pb.ModelInferRequest(model_name="dlrm")
            request.inputs.add(name="dense", datatype="FP32", shape=[4, 13])
            request.inputs.add(name="sparse", datatype="INT64", shape=[4, 26])
            request.raw_input_contents.extend([dense.tobytes(), sparse.tobytes()])
            with grpc.insecure_channel(address) as channel:
                answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
            import onnxruntime as ort

            cpu = ort.InferenceSession(
                str(repo / "dlrm" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
            )
            (expected,) = cpu.run(None, {"dense": dense, "sparse": sparse})
            got = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(-1, 1)
            assert float(np.max(np.abs(got - expected))) <= 1e-3
            supervisor.send_signal(signal.SIGTERM)
            assert supervisor.wait(timeout=60) == 0
