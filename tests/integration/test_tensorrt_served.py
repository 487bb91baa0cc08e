"""A TensorRT plan served through the real server and called with tritonclient, with TensorRT,
CUDA and the GPU replaced by doubles (tests/doubles/) because none exists on the CI machines.
Everything else is real: repository loading, config completion, profiles from the plan,
routing, batching, the gRPC front end. The same plans fed to the real lean runtime are refused
on the GPU machine (tests/gpu/test_tensorrt_lean.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc.aio as tca
from tritonclient.utils import InferenceServerException

from ferry.engines.cuda.devices import Discovery, GpuDevice
from ferry.engines.loading import Registry
from ferry.engines.onnxruntime_loader import OnnxRuntimeLoader
from ferry.engines.tensorrt.loader import TensorRTLoader
from ferry.server.app import FerryServer
from ferry.server.config import ServerConfig
from tests.doubles import cuda_host, tensorrt_api
from tests.doubles.tensorrt_api import write_plan
from tests.models import _save, add_constant

CTR_TENSORS = [
    {"name": "dense", "mode": "INPUT", "dtype": "FLOAT", "shape": [-1, 13]},
    {"name": "sparse", "mode": "INPUT", "dtype": "INT64", "shape": [-1, 26]},
    {"name": "ctr", "mode": "OUTPUT", "dtype": "FLOAT", "shape": [-1, 1]},
]
# Two profiles that differ only in batch size, as plans built for latency and throughput do.
CTR_PROFILES = [
    {"dense": [[1, 13], [8, 13], [16, 13]], "sparse": [[1, 26], [8, 26], [16, 26]]},
    {"dense": [[1, 13], [64, 13], [64, 13]], "sparse": [[1, 26], [64, 26], [64, 26]]},
]
AFFINE_TENSORS = [
    {"name": "x", "mode": "INPUT", "dtype": "FLOAT", "shape": [-1, -1]},
    {"name": "y", "mode": "OUTPUT", "dtype": "FLOAT", "shape": [-1, -1]},
    {"name": "total", "mode": "OUTPUT", "dtype": "FLOAT", "shape": [-1, 1]},
]


def doubled() -> Registry:
    """The real backends, TensorRT's on doubles of TensorRT and CUDA (CI has neither)."""
    return Registry(
        [OnnxRuntimeLoader(), TensorRTLoader(tensorrt_api.module, cuda_host.toolkit)]
    )


def one_gpu() -> Discovery:
    return Discovery((GpuDevice("GPU-double-0", "double GPU", 1 << 30, 0, ordinal=0),), 1)


def build(root: Path) -> Path:
    write_plan(root / "ctr" / "1" / "model.plan", "ctr", CTR_TENSORS, CTR_PROFILES)
    (root / "ctr" / "config.pbtxt").write_text(
        'platform: "tensorrt_plan"\nmax_batch_size: 64\n'
        "dynamic_batching { max_queue_delay_microseconds: 20000 }\n"
        "instance_group { count: 2 kind: KIND_GPU }\n"
        "optimization { cuda { graphs: true } }\n"
    )
    # No config.pbtxt: everything from the plan, max_batch_size from its largest profile.
    write_plan(
        root / "derived" / "1" / "model.plan",
        "affine",
        AFFINE_TENSORS,
        [{"x": [[1, 1], [4, 4], [32, 8]]}],
    )
    (root / "corrupt" / "1").mkdir(parents=True)
    (root / "corrupt" / "1" / "model.plan").write_bytes(b"\x7fELF not a plan")
    write_plan(
        root / "oldplan" / "1" / "model.plan",
        "affine",
        AFFINE_TENSORS,
        [{"x": [[1, 1], [4, 4], [32, 8]]}],
        version="10.0.1.6",
    )
    write_plan(
        root / "on_cpu" / "1" / "model.plan",
        "affine",
        AFFINE_TENSORS,
        [{"x": [[1, 1], [4, 4], [32, 8]]}],
    )
    (root / "on_cpu" / "config.pbtxt").write_text(
        "max_batch_size: 8\ninstance_group { kind: KIND_CPU }\n"
    )
    write_plan(
        root / "too_big" / "1" / "model.plan",
        "affine",
        AFFINE_TENSORS,
        [{"x": [[1, 1], [4, 4], [32, 8]]}],
    )
    (root / "too_big" / "config.pbtxt").write_text("max_batch_size: 100\n")
    _save(add_constant(1.0), root / "onnx_graphs" / "1" / "model.onnx")
    (root / "onnx_graphs" / "config.pbtxt").write_text(
        "max_batch_size: 8\noptimization { cuda { graphs: true } }\n"
    )
    _save(add_constant(1.0), root / "plain" / "1" / "model.onnx")
    (root / "plain" / "config.pbtxt").write_text("max_batch_size: 8\ndynamic_batching { }\n")
    return root


@pytest_asyncio.fixture
async def client(tmp_path: Path) -> AsyncIterator[tca.InferenceServerClient]:
    config = ServerConfig(build(tmp_path), grpc_port=0, metrics_port=-1, strict_readiness=False)
    server = FerryServer(config, loaders=doubled(), discover=one_gpu)
    await server.start()
    client = tca.InferenceServerClient(f"127.0.0.1:{server.tcp_port}")
    try:
        yield client
    finally:
        await client.close()
        await server.stop(0)


def expected_ctr(dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
    logit = dense.sum(axis=1) + 0.001 * (sparse % 97).sum(axis=1)
    return (1 / (1 + np.exp(-logit)))[:, None]


async def ask_ctr(client: tca.InferenceServerClient, rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((rows, 13)).astype(np.float32)
    sparse = rng.integers(0, 10**6, (rows, 26)).astype(np.int64)
    inputs = [
        tca.InferInput("dense", [rows, 13], "FP32"),
        tca.InferInput("sparse", [rows, 26], "INT64"),
    ]
    inputs[0].set_data_from_numpy(dense)
    inputs[1].set_data_from_numpy(sparse)
    result = await client.infer("ctr", inputs)
    np.testing.assert_allclose(result.as_numpy("ctr"), expected_ctr(dense, sparse), rtol=1e-5)


@pytest.mark.asyncio
async def test_a_plan_serves_every_caller_its_own_rows(client: tca.InferenceServerClient) -> None:
    sizes = [1, 3, 16, 17, 40, 64, 100, 5] * 4  # 100 rows: split into chunks of the large profile
    await asyncio.gather(*(ask_ctr(client, n, seed) for seed, n in enumerate(sizes)))
    stats = (await client.get_inference_statistics("ctr", as_json=True))["model_stats"][0]
    assert int(stats["inference_count"]) == sum(sizes)
    assert int(stats["execution_count"]) < len(sizes)  # requests shared batches


@pytest.mark.asyncio
async def test_the_config_is_completed_from_the_plan(client: tca.InferenceServerClient) -> None:
    ctr = (await client.get_model_config("ctr", as_json=True))["config"]
    assert ctr["platform"] == "tensorrt_plan"
    assert [i["name"] for i in ctr["input"]] == ["dense", "sparse"]
    assert ctr["input"][1]["data_type"] == "TYPE_INT64" and ctr["input"][1]["dims"] == ["26"]
    derived = (await client.get_model_config("derived", as_json=True))["config"]
    assert derived["max_batch_size"] == 32  # the plan's largest profile batch
    x = np.ones((2, 9), np.float32)
    tensor = tca.InferInput("x", [2, 9], "FP32")
    tensor.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as info:  # 9 > the profile's 8
        await client.infer("derived", [tensor])
    assert "StatusCode.INVALID_ARGUMENT" in str(info.value.status())
    assert "fit no optimization profile" in info.value.message()
    assert "x [1]..[8]" in info.value.message()


@pytest.mark.asyncio
async def test_plans_that_cannot_load_are_reported_and_the_rest_serve(
    client: tca.InferenceServerClient,
) -> None:
    index = {
        m["name"]: m for m in (await client.get_model_repository_index(as_json=True))["models"]
    }
    reasons = {name: index[name].get("reason", "") for name in index}
    assert index["ctr"]["state"] == "READY" and index["plain"]["state"] == "READY"
    assert "cannot deserialize this plan" in reasons["corrupt"]
    assert "magic tag is wrong" in reasons["corrupt"]
    assert "built by TensorRT 10.0.1.6" in reasons["oldplan"]
    assert "KIND_CPU: a TensorRT plan runs on GPUs" in reasons["on_cpu"]
    assert "max_batch_size 100 is larger than the plan's largest profile" in reasons["too_big"]
    assert "optimization.cuda.graphs needs GPU instances (KIND_GPU)" in reasons["onnx_graphs"]
    x = np.zeros((1, 4), np.float32)
    tensor = tca.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(x)
    result = await client.infer("plain", [tensor])
    np.testing.assert_array_equal(result.as_numpy("y"), x + 1)


@pytest.mark.asyncio
async def test_without_a_gpu_a_plan_is_refused_with_the_reason(tmp_path: Path) -> None:
    config = ServerConfig(build(tmp_path), grpc_port=0, metrics_port=-1, strict_readiness=False)
    server = FerryServer(
        config, loaders=doubled(), discover=lambda: Discovery(reason="NVML library not found")
    )
    await server.start()
    try:
        entry = server.repository.entry("ctr")
        assert entry.state == "UNAVAILABLE"
        assert "needs a GPU" in entry.reason and "NVML library not found" in entry.reason
        assert server.repository.entry("plain").state == "READY"
    finally:
        await server.stop(0)
