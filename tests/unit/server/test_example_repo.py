"""`ferry example-repo` writes the same bytes every time, the models load in ONNX Runtime, and
`dlrm_int8` is `dlrm` built by `ferry build`, made once per `dlrm`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from ferry.server.cli import main


def test_two_runs_are_byte_identical(tmp_path: Path) -> None:
    assert main(["example-repo", "--no-int8", str(tmp_path / "a")]) == 0
    assert main(["example-repo", "--no-int8", str(tmp_path / "b")]) == 0
    files = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    assert {str(f) for f in files} >= {
        "dlrm/config.pbtxt",
        "dlrm/1/model.onnx",
        "echo/1/model.onnx",
        "history/1/model.onnx",
    }
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_history_ignores_padding(tmp_path: Path) -> None:
    main(["example-repo", "--no-int8", str(tmp_path)])
    session = ort.InferenceSession(str(tmp_path / "history" / "1" / "model.onnx"))
    user = np.ones((1, 16), np.float32)
    short = np.array([[5, 17, 900]], np.int64)
    padded = np.array([[5, 17, 900, 0, 0, 0, 0]], np.int64)
    (a,) = session.run(None, {"history": short, "user": user})
    (b,) = session.run(None, {"history": padded, "user": user})
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_dlrm_is_the_dlrm_function(tmp_path: Path) -> None:
    """The example computes what the DLRM paper defines, checked against numpy from the model's
    own weights: embeddings looked up per table (ids modulo the table size), a bottom MLP on
    the dense features, the dot product of every pair of the 27 vectors (no self-products),
    then the top MLP over [bottom output, products] and a sigmoid."""
    main(["example-repo", "--no-int8", str(tmp_path)])
    path = tmp_path / "dlrm" / "1" / "model.onnx"
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    rng = np.random.default_rng(7)
    dense = rng.standard_normal((5, 13)).astype(np.float32)
    sparse = rng.integers(-(10**6), 10**6, (5, 26)).astype(np.int64)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"dense": dense, "sparse": sparse})

    def mlp(x: np.ndarray, prefix: str, last_relu: bool) -> np.ndarray:
        layers = sum(1 for name in weights if name.startswith(prefix) and name.endswith("_w"))
        for i in range(layers):
            x = x @ weights[f"{prefix}{i}_w"] + weights[f"{prefix}{i}_b"]
            if i < layers - 1 or last_relu:
                x = np.maximum(x, 0)
        return x

    tables = weights["tables"].reshape(26, -1, weights["tables"].shape[1])
    embedded = tables[np.arange(26), np.mod(sparse, tables.shape[1])]  # [5, 26, dim]
    bottom = mlp(dense, "bottom", last_relu=True)
    vectors = np.concatenate([bottom[:, None, :], embedded], axis=1)  # [5, 27, dim]
    rows, cols = np.tril_indices(27, k=-1)
    products = np.einsum("bid,bjd->bij", vectors, vectors)[:, rows, cols]
    assert products.shape == (5, 351)
    logit = mlp(np.concatenate([bottom, products], axis=1), "top", last_relu=False)
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-logit)), rtol=1e-4, atol=1e-6)


def test_dlrm_int8_is_dlrm_built_to_int8_and_is_made_once(tmp_path: Path) -> None:
    assert main(["example-repo", str(tmp_path)]) == 0
    manifest_path = tmp_path / "dlrm_int8" / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    source = (tmp_path / "dlrm" / "1" / "model.onnx").read_bytes()
    assert manifest["source_sha256"] == hashlib.sha256(source).hexdigest()
    assert manifest["precision"] == "int8" and manifest["calibration"]["method"] == "entropy"
    assert manifest["accuracy"]["outputs"][0]["max_abs"] < 0.01
    assert (tmp_path / "dlrm_int8" / "config.pbtxt").is_file()
    before = manifest_path.read_bytes()
    assert main(["example-repo", str(tmp_path)]) == 0
    assert manifest_path.read_bytes() == before  # the same dlrm: not built again
