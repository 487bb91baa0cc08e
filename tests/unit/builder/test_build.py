"""`ferry build` on the ONNX Runtime CPU target: what a build writes (model, config, manifest,
speed report), INT8 with each calibration method, and every refusal, which writes nothing."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ferry.builder.build import build
from ferry.builder.gate import _auc
from ferry.builder.options import BuildOptions, Calibration, Precision, Target
from ferry.common.errors import BuildError
from tests.unit.builder.conftest import ROWS


def options(dlrm: Path, tmp_path: Path, **changes: object) -> BuildOptions:
    base = BuildOptions(
        source=dlrm,
        repository=tmp_path / "repo",
        name="built",
        calibration_rows=256,
        batch_sizes=(64,),
        speed_seconds=0.05,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_fp32_build_publishes_the_optimized_model_with_config_and_manifest(
    dlrm: Path, tmp_path: Path
) -> None:
    result = build(options(dlrm, tmp_path))
    folder = tmp_path / "repo" / "built" / "1"
    assert result.folder == folder
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.onnx", "speed.txt"]
    config = (tmp_path / "repo" / "built" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "max_batch_size: 1024" in config
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["source_sha256"] == sha256(dlrm)
    assert manifest["artifact_sha256"] == sha256(folder / "model.onnx")
    assert manifest["precision"] == "fp32" and manifest["target"] == "onnxruntime-cpu"
    assert manifest["calibration"]["source"] == "synthetic"
    assert manifest["settings"]["source"] == str(dlrm)
    assert {"onnxruntime", "numpy", "python"} <= manifest["libraries"].keys()
    assert result.accuracy.max_error < 1e-5  # the same arithmetic, rearranged
    assert [row["batch"] for row in manifest["speed"]] == [64]
    assert "ratio" in (folder / "speed.txt").read_text()


def test_the_next_build_takes_the_next_version_and_keeps_the_config(
    dlrm: Path, tmp_path: Path
) -> None:
    build(options(dlrm, tmp_path))
    config = tmp_path / "repo" / "built" / "config.pbtxt"
    config.write_text(config.read_text() + "# the operator's own\n")
    assert build(options(dlrm, tmp_path)).folder.name == "2"
    assert config.read_text().endswith("# the operator's own\n")
    with pytest.raises(BuildError, match="exists: choose another --version, or --overwrite"):
        build(options(dlrm, tmp_path, version=2))
    assert build(options(dlrm, tmp_path, version=2, overwrite=True)).folder.name == "2"


@pytest.mark.parametrize("method", list(Calibration))
def test_int8_with_each_calibration_method_stays_close_to_the_source(
    dlrm: Path, inputs: Path, tmp_path: Path, method: Calibration
) -> None:
    result = build(
        options(dlrm, tmp_path, precision=Precision.INT8, calibration=inputs, method=method)
    )
    manifest = result.manifest
    assert manifest["calibration"] == {"source": str(inputs), "rows": 256, "method": str(method)}
    assert len(manifest["calibration_sha256"]) == 64
    assert manifest["held_out_rows"] == ROWS // 5
    assert result.accuracy.max_error < 0.05
    assert result.accuracy.worst_layers  # the per-layer comparison ran
    ops = {node.op_type for node in onnx.load(str(result.folder / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def _zero_points_and_scales(path: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    model = onnx.load(str(path))
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points, weight_scales = [], []
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2:
            zero_points.append(values[node.input[2]])
        if node.op_type == "DequantizeLinear" and node.input[0] in values:  # a weight
            weight_scales.append(values[node.input[1]])
    return zero_points, weight_scales


def test_symmetric_int8_has_signed_activations_with_zero_points_0(
    dlrm: Path, inputs: Path, tmp_path: Path
) -> None:
    asymmetric = build(options(dlrm, tmp_path, precision=Precision.INT8, calibration=inputs))
    symmetric = build(
        options(dlrm, tmp_path, precision=Precision.INT8, calibration=inputs, symmetric=True)
    )
    points, _ = _zero_points_and_scales(symmetric.folder / "model.onnx")
    assert points and all(p.dtype == np.int8 and not p.any() for p in points)
    points, _ = _zero_points_and_scales(asymmetric.folder / "model.onnx")
    assert any(p.dtype == np.uint8 and p.any() for p in points)


def test_weights_are_scaled_per_channel_unless_asked_per_tensor(
    dlrm: Path, inputs: Path, tmp_path: Path
) -> None:
    common = {"precision": Precision.INT8, "calibration": inputs}
    channel = build(options(dlrm, tmp_path, **common))
    tensor = build(options(dlrm, tmp_path, per_channel=False, **common))
    _, scales = _zero_points_and_scales(channel.folder / "model.onnx")
    assert any(s.size > 1 for s in scales)
    _, scales = _zero_points_and_scales(tensor.folder / "model.onnx")
    assert scales and all(s.size == 1 for s in scales)


def test_labels_give_auc_and_log_loss_for_source_and_build(
    dlrm: Path, inputs: Path, tmp_path: Path
) -> None:
    labels = tmp_path / "labels.npy"
    np.save(labels, np.random.default_rng(5).integers(0, 2, ROWS))
    result = build(
        options(dlrm, tmp_path, precision=Precision.INT8, calibration=inputs, labels=labels)
    )
    assert result.accuracy.auc is not None and result.accuracy.log_loss is not None
    assert all(0.0 <= a <= 1.0 for a in result.accuracy.auc)
    assert tuple(result.manifest["accuracy"]["auc"]) == result.accuracy.auc


def test_the_gate_refuses_a_build_that_moved_too_far_naming_the_worst_layers(
    dlrm: Path, inputs: Path, tmp_path: Path
) -> None:
    wanted = options(dlrm, tmp_path, precision=Precision.INT8, calibration=inputs, max_error=1e-7)
    refusal = (
        r"the accuracy gate refused the build: output ctr .*--max-error 1e-07.*"
        r"the layers that lose most: \w+ \(-?[\d.]+ dB\)"
    )
    with pytest.raises(BuildError, match=refusal):
        build(wanted)
    assert not (tmp_path / "repo" / "built").exists()
    assert not list((tmp_path / "repo").iterdir())  # no staging left behind


def test_an_auc_drop_beyond_the_limit_is_refused(dlrm: Path, inputs: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.npy"
    np.save(labels, np.random.default_rng(5).integers(0, 2, ROWS))
    wanted = options(
        dlrm,
        tmp_path,
        precision=Precision.INT8,
        calibration=inputs,
        labels=labels,
        max_auc_drop=-1.0,
    )
    with pytest.raises(BuildError, match=r"AUC fell by .* \(--max-auc-drop -1\)"):
        build(wanted)


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"dense": np.zeros((20, 13), np.float32)}, r"no array for model input\(s\) \['sparse'\]"),
        (
            {
                "dense": np.zeros((20, 13), np.float32),
                "sparse": np.zeros((20, 26), np.int64),
                "extra": np.zeros(20),
            },
            r"array\(s\) \['extra'\] are not inputs of the model",
        ),
        (
            {"dense": np.zeros((20, 13), np.float64), "sparse": np.zeros((20, 26), np.int64)},
            "input dense is float64; the model takes float32",
        ),
        (
            {"dense": np.zeros((20, 12), np.float32), "sparse": np.zeros((20, 26), np.int64)},
            r"input dense has rows of shape \[12\]; the model takes \[13\]",
        ),
        (
            {"dense": np.zeros((20, 13), np.float32), "sparse": np.zeros((19, 26), np.int64)},
            "the inputs do not hold the same number of rows",
        ),
        (
            {"dense": np.zeros((5, 13), np.float32), "sparse": np.zeros((5, 26), np.int64)},
            "5 rows are too few to calibrate and check a build",
        ),
    ],
)
def test_calibration_data_that_does_not_match_the_model_is_refused(
    dlrm: Path, tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    data = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(BuildError, match=message):
        build(options(dlrm, tmp_path, precision=Precision.INT8, calibration=data))
    assert not (tmp_path / "repo").exists() or not list((tmp_path / "repo").iterdir())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"precision": Precision.INT8}, "--precision int8 needs --calibration"),
        ({"precision": Precision.FP16}, "--target onnxruntime-cpu builds fp32, int8, not fp16"),
        ({"calibration": Path("/nonexistent.npz")}, "no such file or directory"),
        ({"max_auc_drop": 0.01}, "--max-auc-drop needs --labels"),
        ({"version": 0}, "--version must be 1 or more"),
        ({"name": "../escape"}, "is not a model folder name"),
        ({"batch_sizes": (4096,)}, r"batch sizes \[4096\] must be in 1..1024"),
        ({"source": Path("/nonexistent.onnx")}, "no such ONNX file"),
    ],
)
def test_options_that_cannot_be_built_are_refused_before_any_work(
    dlrm: Path, tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(BuildError, match=message):
        build(options(dlrm, tmp_path, **changes))
    assert not (tmp_path / "repo").exists()


def test_labels_that_do_not_match_the_data_are_refused(
    dlrm: Path, inputs: Path, tmp_path: Path
) -> None:
    labels = tmp_path / "labels.npy"
    np.save(labels, np.zeros(ROWS - 1, np.int64))
    with pytest.raises(BuildError, match=f"--labels holds {ROWS - 1} labels for {ROWS} rows"):
        build(options(dlrm, tmp_path, calibration=inputs, labels=labels))
    np.save(labels, np.full(ROWS, 2, np.int64))
    with pytest.raises(BuildError, match="--labels must hold 0 or 1 per row"):
        build(options(dlrm, tmp_path, calibration=inputs, labels=labels))


@pytest.mark.parametrize("seed", range(5))
def test_auc_is_the_chance_a_positive_outscores_a_negative(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    scores = rng.integers(0, 8, 60).astype(np.float32)  # many ties
    positives, negatives = scores[labels == 1], scores[labels == 0]
    pairs = positives[:, None] - negatives[None, :]
    expected = ((pairs > 0).sum() + 0.5 * (pairs == 0).sum()) / pairs.size
    assert _auc(labels, scores) == pytest.approx(expected)


def test_the_cuda_target_takes_fp16_weights_and_symmetric_int8_on_gpu_instances(
    dlrm: Path, inputs: Path, tmp_path: Path
) -> None:
    half = build(
        options(
            dlrm, tmp_path, target=Target.ONNXRUNTIME_CUDA, precision=Precision.FP16, max_error=0.01
        )
    )
    config = (half.folder.parent / "config.pbtxt").read_text()
    assert "KIND_GPU" in config and 'platform: "onnxruntime_onnx"' in config
    model = onnx.load(str(half.folder / "model.onnx"))
    kinds = {i.data_type for i in model.graph.initializer if i.name.endswith("_w")}
    assert kinds == {onnx.TensorProto.FLOAT16}
    assert {i.type.tensor_type.elem_type for i in model.graph.input} == {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.INT64,
    }
    assert half.speed == []  # a GPU's speed is not this host's CPU's
    int8 = build(
        options(
            dlrm,
            tmp_path,
            target=Target.ONNXRUNTIME_CUDA,
            precision=Precision.INT8,
            calibration=inputs,
        )
    )
    points, _ = _zero_points_and_scales(int8.folder / "model.onnx")
    assert points and all(p.dtype == np.int8 and not p.any() for p in points)


def test_hostile_files_are_refused_without_running_them(dlrm: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"\x00not an onnx model" * 64)
    with pytest.raises(BuildError, match="onnxruntime cannot load it"):
        build(options(garbage, tmp_path))
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, dense=np.array([object()] * 20, dtype=object), sparse=np.zeros((20, 26)))
    with pytest.raises(BuildError, match=r"not a readable \.npz"):  # never unpickled
        build(options(dlrm, tmp_path, precision=Precision.INT8, calibration=pickled))
    assert not (tmp_path / "repo").exists()
