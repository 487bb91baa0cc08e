"""What the build tests share: the example repository, and model inputs for `dlrm` as an .npz
(rows drawn as the load generator draws its requests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ferry.server.example_repo import write_example_repo

ROWS = 1200


@pytest.fixture(scope="package")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("examples")
    write_example_repo(root)
    return root


@pytest.fixture(scope="package")
def dlrm(examples: Path) -> Path:
    return examples / "dlrm" / "1" / "model.onnx"


@pytest.fixture(scope="package")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(4)
    path = tmp_path_factory.mktemp("data") / "inputs.npz"
    np.savez(
        path,
        dense=rng.standard_normal((ROWS, 13)).astype(np.float32),
        sparse=rng.integers(0, 10**6, (ROWS, 26)).astype(np.int64),
    )
    return path
