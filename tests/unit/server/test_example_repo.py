"""`ferry example-repo` writes the same bytes every time, and the models load in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from server.cli import main


def test_two_runs_are_byte_identical(tmp_path: Path) -> None:
    assert main(["example-repo", str(tmp_path / "a")]) == 0
    assert main(["example-repo", str(tmp_path / "b")]) == 0
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
    main(["example-repo", str(tmp_path)])
    session = ort.InferenceSession(str(tmp_path / "history" / "1" / "model.onnx"))
    user = np.ones((1, 16), np.float32)
    short = np.array([[5, 17, 900]], np.int64)
    padded = np.array([[5, 17, 900, 0, 0, 0, 0]], np.int64)
    (a,) = session.run(None, {"history": short, "user": user})
    (b,) = session.run(None, {"history": padded, "user": user})
    np.testing.assert_allclose(a, b, rtol=1e-6)
