"""The ONNX Runtime CUDA backend on a real GPU (marker `gpu`): for every example model, batches
formed by the scheduler over two instances (two streams) on one GPU answer each concurrent
request as ONNX Runtime on the CPU answers it alone (max abs error <= 1e-3: TF32 is on)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from ferry.engines.base import UNBOUNDED, Device
from ferry.engines.cuda.devices import discover
from ferry.scheduler import BatchingConfig, ModelScheduler, PaddedInput, Padding
from ferry.server.example_repo import write_example_repo

pytestmark = [pytest.mark.gpu, pytest.mark.asyncio]


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    found = discover()
    if not found.devices:
        pytest.skip(f"no GPU: {found.reason}")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime without CUDAExecutionProvider (install onnxruntime-gpu)")
    root = tmp_path_factory.mktemp("examples")
    write_example_repo(root)
    return root


def requests_for(model: str, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    out = []
    for i, rows in enumerate([1, 7, 64, 3, 256, 33, 1, 100]):
        if model == "dlrm":
            out.append(
                {
                    "dense": rng.standard_normal((rows, 13)).astype(np.float32),
                    "sparse": rng.integers(0, 10**6, (rows, 26)).astype(np.int64),
                }
            )
        elif model == "echo":
            out.append({"x": rng.standard_normal((rows, 16)).astype(np.float32)})
        else:
            length = [5, 64, 17, 1, 40, 64, 9, 33][i]
            out.append(
                {
                    "history": rng.integers(1, 10_000, (min(rows, 32), length)).astype(np.int64),
                    "user": rng.standard_normal((min(rows, 32), 16)).astype(np.float32),
                }
            )
    return out


@pytest.mark.parametrize("model", ["dlrm", "echo", "history"])
async def test_served_on_the_gpu_equals_onnx_runtime_on_the_cpu(model: str, examples: Path) -> None:
    import onnxruntime as ort

    from ferry.engines.onnxruntime_cuda import OnnxRuntimeCudaEngine

    path = examples / model / "1" / "model.onnx"
    engine = OnnxRuntimeCudaEngine(path)
    instances = [engine.create_instance(f"{model}{i}", Device("gpu", 0), UNBOUNDED) for i in (0, 1)]
    padding = Padding({"history": PaddedInput(0, (0,))}) if model == "history" else None
    scheduler = ModelScheduler(
        model,
        instances,
        BatchingConfig(max_batch_size=1024, dynamic=True, max_queue_delay_s=0.002),
        padding=padding,
    )
    await scheduler.start()
    try:
        requests = requests_for(model, np.random.default_rng(3))
        results = await asyncio.gather(
            *(scheduler.infer(r, next(iter(r.values())).shape[0]) for r in requests)
        )
    finally:
        await scheduler.stop()
    cpu = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in cpu.get_outputs()]
    for request, result in zip(requests, results, strict=True):
        for name, expected in zip(names, cpu.run(None, request), strict=True):
            got = result.outputs[name]
            assert got.shape == expected.shape
            assert float(np.max(np.abs(got - expected))) <= 1e-3
    assert scheduler.stats.execution_count < len(requests)  # requests did share batches


async def test_dlrm_large_on_the_gpu_equals_onnx_runtime_on_the_cpu(
    examples: Path, tmp_path: Path
) -> None:
    import onnxruntime as ort

    from ferry.engines.onnxruntime_cuda import OnnxRuntimeCudaEngine

    write_example_repo(tmp_path, large=True)
    path = tmp_path / "dlrm_large" / "1" / "model.onnx"
    engine = OnnxRuntimeCudaEngine(path)
    instances = [engine.create_instance(f"large{i}", Device("gpu", 0), UNBOUNDED) for i in (0, 1)]
    scheduler = ModelScheduler(
        "dlrm_large",
        instances,
        BatchingConfig(max_batch_size=16384, dynamic=True, max_queue_delay_s=0.002),
    )
    await scheduler.start()
    rng = np.random.default_rng(5)
    requests = [
        {
            "dense": rng.standard_normal((rows, 13)).astype(np.float32),
            "sparse": rng.integers(0, 10**9, (rows, 26)).astype(np.int64),
        }
        for rows in (1, 1024, 5, 3000, 1024, 77)
    ]
    try:
        results = await asyncio.gather(*(scheduler.infer(r, r["dense"].shape[0]) for r in requests))
    finally:
        await scheduler.stop()
    cpu = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for request, result in zip(requests, results, strict=True):
        (expected,) = cpu.run(None, request)
        assert result.outputs["ctr"].shape == expected.shape
        assert float(np.max(np.abs(result.outputs["ctr"] - expected))) <= 1e-3


async def test_cuda_graphs_answer_every_batch_size_as_the_cpu(examples: Path) -> None:
    """Every batch replays the graph of the next power of two, its extra rows zeroed; each
    caller still gets exactly its own rows, equal to the CPU's answer."""
    import onnxruntime as ort

    from ferry.engines.onnxruntime import OnnxRuntimeOptions
    from ferry.engines.onnxruntime_cuda import OnnxRuntimeCudaEngine, graph_sizes

    path = examples / "dlrm" / "1" / "model.onnx"
    engine = OnnxRuntimeCudaEngine(path, OnnxRuntimeOptions(cuda_graphs=True), max_batch_size=1024)
    instances = [engine.create_instance(f"g{i}", Device("gpu", 0), UNBOUNDED) for i in (0, 1)]
    for instance in instances:  # graphs for the sizes 1, 2, 4 .. up to where they stop paying
        kept = instance._graph_sizes
        assert kept == graph_sizes(1024)[: len(kept)] and len(kept) >= 1
        assert instance.graphs == 2 * len(kept)  # for each of 2 slots
        replay, plain = instance.graph_timings[1]
        assert replay < plain  # a single row is launch-bound: the graph pays
    scheduler = ModelScheduler(
        "dlrm",
        instances,
        BatchingConfig(max_batch_size=1024, dynamic=True, max_queue_delay_s=0.002),
    )
    await scheduler.start()
    rng = np.random.default_rng(8)
    requests = [
        {
            "dense": rng.standard_normal((rows, 13)).astype(np.float32),
            "sparse": rng.integers(0, 10**6, (rows, 26)).astype(np.int64),
        }
        for rows in (1, 3, 1024, 5, 500, 129, 64, 1, 1000, 2)
    ]
    try:
        results = []
        for request in requests:  # alone: each batch size as it comes, padding included
            results.append(await scheduler.infer(request, request["dense"].shape[0]))
        results += await asyncio.gather(  # together: batches of several callers
            *(scheduler.infer(r, r["dense"].shape[0]) for r in requests)
        )
    finally:
        await scheduler.stop()
    cpu = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for request, result in zip(requests * 2, results, strict=True):
        (expected,) = cpu.run(None, request)
        assert result.outputs["ctr"].shape == expected.shape
        assert float(np.max(np.abs(result.outputs["ctr"] - expected))) <= 1e-3


async def test_cuda_graphs_refuse_a_model_whose_dims_vary(examples: Path) -> None:
    from ferry.common.errors import ModelLoadError
    from ferry.engines.onnxruntime import OnnxRuntimeOptions
    from ferry.engines.onnxruntime_cuda import OnnxRuntimeCudaEngine

    with pytest.raises(ModelLoadError, match="needs fixed non-batch dims, and tensor 'x'"):
        OnnxRuntimeCudaEngine(
            examples / "echo" / "1" / "model.onnx", OnnxRuntimeOptions(cuda_graphs=True), 1024
        )
