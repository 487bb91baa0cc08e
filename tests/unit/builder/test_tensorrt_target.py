"""The TensorRT target of `ferry build`, against a double of TensorRT's builder API (no
TensorRT builder can be installed here; tests/doubles/tensorrt_builder.py): profiles, precision
through the graph (FP16 casts, INT8 Q/DQ), the timing cache carried between builds, the builder
options, and what Ferry's TensorRT engine makes of the plan."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ferry.builder.build import build
from ferry.builder.options import BuildOptions, Precision, Target
from ferry.builder.samples import model_inputs, synthetic
from ferry.builder.transforms import bf16_rounded, to_bf16, to_fp16
from ferry.common.errors import BuildError
from ferry.engines.tensorrt.engine import TensorRTEngine
from ferry.engines.tensorrt.options import TensorRTOptions
from tests.doubles import cuda_host, tensorrt_builder
from tests.doubles.tensorrt_api import VERSION
from tests.doubles.tensorrt_builder import Builder, read_plan


def plan_build(examples: Path, tmp_path: Path, model: str = "dlrm", **changes: object):  # type: ignore[no-untyped-def]
    options = BuildOptions(
        source=examples / model / "1" / "model.onnx",
        repository=tmp_path / "repo",
        name="planned",
        target=Target.TENSORRT,
        calibration_rows=256,
    )
    return build(replace(options, **changes), trt=tensorrt_builder.module())  # type: ignore[arg-type]


def test_a_plan_is_published_with_its_profile_and_loads_in_ferrys_tensorrt_engine(
    examples: Path, tmp_path: Path
) -> None:
    result = plan_build(examples, tmp_path, batch_sizes=(1, 64, 256))
    assert sorted(p.name for p in result.folder.iterdir()) == ["manifest.json", "model.plan"]
    config = (result.folder.parent / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in config and "KIND_GPU" in config
    plan = read_plan(result.folder / "model.plan")
    assert plan["profiles"] == [
        {"dense": [[1, 13], [256, 13], [1024, 13]], "sparse": [[1, 26], [256, 26], [1024, 26]]}
    ]
    manifest = json.loads((result.folder / "manifest.json").read_text())
    assert manifest["tensorrt"]["tensorrt"] == VERSION
    assert manifest["artifact"] == "model.plan" and manifest["speed"] == []
    engine = TensorRTEngine(
        result.folder / "model.plan",
        [0],
        TensorRTOptions(),
        trt=tensorrt_builder.module(),
        cuda=cuda_host.toolkit(),
    )
    assert [(s.name, s.datatype.name) for s in engine.inputs] == [
        ("dense", "FP32"),
        ("sparse", "INT64"),
    ]
    assert engine.profiles[0].ranges["dense"].max == (13,)  # the rows are the batch


def test_profiles_come_from_the_option_or_else_the_source_config(
    examples: Path, tmp_path: Path
) -> None:
    from_config = plan_build(examples, tmp_path, model="history", max_batch_size=256)
    plan = read_plan(from_config.folder / "model.plan")
    assert [p["history"] for p in plan["profiles"]] == [
        [[1, 1], [256, 64], [256, 64]],
        [[1, 1], [256, 512], [256, 512]],
    ]
    assert plan["profiles"][0]["user"] == [[1, 16], [256, 16], [256, 16]]
    given = plan_build(
        examples, tmp_path, model="history", max_batch_size=256, profiles=("history:1..32..128",)
    )
    (only,) = read_plan(given.folder / "model.plan")["profiles"]
    assert only["history"] == [[1, 1], [256, 32], [256, 128]]


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ("nothing:1..4", r"must be <input>:<min>..<max> with an input of the model"),
        ("history:1..2..3..4", "give min..max or min..opt..max"),
        ("history:1..a", "dims must be integers"),
        ("history:8..4", r"dim 1: needs 1 <= min <= opt <= max, got 8, 4, 4"),
        ("history:1x2..4x4", r"input history has 2 dims \[-1, -1\]; the profile gives \[1, 1, 2\]"),
        ("history:1..4 user:8..8", "input user dim 1 is fixed at 16 in the model"),
        ("user:16..16", r"--profile gives no range for input history, whose dims \['-1'\] vary"),
    ],
)
def test_a_bad_profile_is_refused_naming_the_input(
    examples: Path, tmp_path: Path, profile: str, message: str
) -> None:
    with pytest.raises(BuildError, match=message):
        plan_build(examples, tmp_path, model="history", max_batch_size=256, profiles=(profile,))
    assert not (tmp_path / "repo" / "planned").exists()


def test_int8_reaches_tensorrt_as_symmetric_qdq(
    examples: Path, inputs: Path, tmp_path: Path
) -> None:
    plan_build(examples, tmp_path, precision=Precision.INT8, calibration=inputs)
    assert Builder.built[-1]["quantized"]


def test_fp16_reaches_tensorrt_as_an_fp16_graph(examples: Path, tmp_path: Path) -> None:
    result = plan_build(examples, tmp_path, precision=Precision.FP16, max_error=0.01)
    assert result.manifest["precision"] == "fp16" and result.accuracy.max_error < 0.01
    plan = read_plan(result.folder / "model.plan")
    assert {t["name"]: t["dtype"] for t in plan["tensors"]}["dense"] == "FLOAT"  # I/O stay FP32


def test_the_timing_cache_is_written_and_reused_by_the_next_build(
    examples: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "timing.cache"
    first = plan_build(examples, tmp_path, timing_cache=cache)
    assert cache.is_file() and not Builder.built[-1]["cache_hit"]
    assert first.manifest["tensorrt"]["timing_cache_reused"] is False
    second = plan_build(examples, tmp_path, timing_cache=cache)
    assert Builder.built[-1]["cache_hit"]
    assert second.manifest["tensorrt"]["timing_cache_reused"] is True


def test_builder_options_reach_the_builder(examples: Path, tmp_path: Path) -> None:
    result = plan_build(
        examples, tmp_path, optimization_level=5, version_compatible=True, exclude_lean_runtime=True
    )
    assert Builder.built[-1]["level"] == 5
    assert Builder.built[-1]["flags"] == ["EXCLUDE_LEAN_RUNTIME", "VERSION_COMPATIBLE"]
    assert result.manifest["tensorrt"]["version_compatible"] is True
    with pytest.raises(BuildError, match="--exclude-lean-runtime needs --version-compatible"):
        plan_build(examples, tmp_path, exclude_lean_runtime=True)
    with pytest.raises(BuildError, match=r"--optimization-level must be in 0\.\.5, got 6"):
        plan_build(examples, tmp_path, optimization_level=6)


def test_nodes_that_would_overflow_fp16_stay_fp32(tmp_path: Path) -> None:
    """x * 1e5 overflows FP16 (max 65504) before * 1e-5 brings it back: both Muls stay FP32
    (the tensor between them cannot be FP16), and the answer stays right."""
    big = numpy_helper.from_array(np.array(1e5, np.float32), "big")
    small = numpy_helper.from_array(np.array(1e-5, np.float32), "small")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "big"], ["scaled"], name="up"),
            helper.make_node("Mul", ["scaled", "small"], ["y"], name="down"),
        ],
        "overflow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [big, small],
    )
    source = tmp_path / "overflow.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, source)
    sample = synthetic(model_inputs(source), 64)
    kept = to_fp16(source, tmp_path / "fp16.onnx", sample)
    assert kept == ["up", "down"]  # the one that makes it and the one that takes it
    import onnxruntime as ort

    x = np.linspace(-3, 3, 16, dtype=np.float32).reshape(4, 4)
    (y,) = ort.InferenceSession(str(tmp_path / "fp16.onnx")).run(None, {"x": x})
    np.testing.assert_allclose(y, x, rtol=1e-2)


def test_without_tensorrt_the_target_is_refused_saying_where_it_runs(
    examples: Path, tmp_path: Path
) -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here")
    options = BuildOptions(
        source=examples / "dlrm" / "1" / "model.onnx",
        repository=tmp_path / "repo",
        name="x",
        target=Target.TENSORRT,
    )
    with pytest.raises(
        BuildError, match=r"needs the TensorRT builder .*NVIDIA's TensorRT container"
    ):
        build(options)
    assert not (tmp_path / "repo").exists()


def test_bf16_reaches_tensorrt_as_a_bf16_graph_and_the_gate_checks_its_rounded_weights(
    examples: Path, tmp_path: Path
) -> None:
    source = examples / "dlrm" / "1" / "model.onnx"
    graph_path, emulation = tmp_path / "bf16.onnx", tmp_path / "emulated.onnx"
    to_bf16(source, graph_path, emulation)
    model = onnx.load(str(graph_path))
    onnx.checker.check_model(model, full_check=True)  # every operator takes BF16 where it gets it
    floats = {i.data_type for i in model.graph.initializer} - {TensorProto.INT64}
    assert floats == {TensorProto.BFLOAT16}
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [
        TensorProto.FLOAT,
        TensorProto.INT64,
    ]
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    casts = {n.name for n in model.graph.node if n.op_type == "Cast"}
    assert {"dense_to_bf16", "ctr_to_fp32"} <= casts
    weights = {i.name: i for i in onnx.load(str(emulation)).graph.initializer}
    rounded = numpy_helper.to_array(weights["tables"])
    assert np.array_equal(bf16_rounded(rounded), rounded)  # already BF16 values, kept FP32
    result = plan_build(examples, tmp_path, precision=Precision.BF16, max_error=0.01)
    assert result.manifest["precision"] == "bf16" and "BF16" in result.manifest["gate"]
    assert 0 < result.accuracy.max_error < 0.01
    assert sorted(p.name for p in result.folder.iterdir()) == ["manifest.json", "model.plan"]


def test_bf16_bits_round_to_nearest_even() -> None:
    values = np.array([1.0, 1.00390625, 1.01171875, -3.0, 1e38], np.float32)
    # 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even pattern (1.0)
    assert bf16_rounded(values).tolist()[:4] == [1.0, 1.0, 1.015625, -3.0]
    assert np.isfinite(bf16_rounded(values)).all()
