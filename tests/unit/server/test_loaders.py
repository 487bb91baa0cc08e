"""The repository hands each version folder to the loader its config (or its file) names, and
keeps to folders, versions, config and lifecycle: a backend it has never heard of plugs in
through the registry alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ferry.common.errors import ModelLoadError
from ferry.engines.fake import FakeEngine, FakeLoader
from ferry.engines.loading import Registry
from ferry.engines.onnxruntime_loader import OnnxRuntimeLoader
from ferry.server.repository import READY, ModelRepository, RepositoryOptions

pytestmark = pytest.mark.asyncio


def folder(root: Path, name: str, config: str | None, artifact: str = "model.fake") -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "1" / artifact).write_bytes(b"not a real model")
    if config is not None:
        (root / name / "config.pbtxt").write_text(config)


async def test_a_backend_plugs_in_through_the_registry(tmp_path: Path) -> None:
    engine = FakeEngine()
    folder(tmp_path, "by_backend", 'backend: "fake"\nmax_batch_size: 8\ndynamic_batching { }')
    folder(tmp_path, "by_platform", 'platform: "ferry_fake"\nmax_batch_size: 8')
    folder(tmp_path, "by_file", None)  # no config: the file it ships names the backend
    registry = Registry([OnnxRuntimeLoader(), FakeLoader(engine)])
    repository = ModelRepository(tmp_path, RepositoryOptions(loaders=registry))
    await repository.load()
    try:
        for name in ("by_backend", "by_platform", "by_file"):
            entry = repository.entry(name)
            assert entry.state == READY, entry.reason
            served = repository.get(name)
            assert served.settings.config.platform == "ferry_fake"
            assert len(served.sha256) == 64
            x = np.arange(6, dtype=np.float32).reshape(3, 2)
            result = await served.scheduler.infer({"x": x}, 3)
            np.testing.assert_array_equal(result.outputs["y"], 2 * x)
        # Without config.pbtxt the fake's free first dimension makes the model batchable.
        assert repository.get("by_file").settings.batching.max_batch_size == 4
    finally:
        await repository.stop()


async def test_an_unknown_platform_or_a_disagreement_is_refused_with_the_reason(
    tmp_path: Path,
) -> None:
    folder(tmp_path, "unknown", 'platform: "pytorch_libtorch"')
    folder(tmp_path, "disagree", 'platform: "onnxruntime_onnx"\nbackend: "fake"')
    folder(tmp_path, "nothing", None, artifact="weights.bin")
    registry = Registry([OnnxRuntimeLoader(), FakeLoader()])
    repository = ModelRepository(tmp_path, RepositoryOptions(loaders=registry))
    await repository.load()
    reasons = {e.name: e.reason for e in repository.entries()}
    assert "platform 'pytorch_libtorch' is not supported" in reasons["unknown"]
    assert "platform 'onnxruntime_onnx' and backend 'fake' disagree" in reasons["disagree"]
    assert "no model file (model.onnx, model.fake)" in reasons["nothing"]
    await repository.stop()


async def test_a_config_that_does_not_fit_the_artifact_closes_what_was_made(
    tmp_path: Path,
) -> None:
    closed: list[str] = []

    class Watched(FakeEngine):
        def close(self) -> None:
            closed.append("engine")

    folder(
        tmp_path,
        "bad",
        'backend: "fake"\nmax_batch_size: 8\ninput { name: "z" data_type: TYPE_FP32 dims: [2] }',
    )
    repository = ModelRepository(
        tmp_path, RepositoryOptions(loaders=Registry([FakeLoader(Watched())]))
    )
    await repository.load()
    entry = repository.entry("bad")
    assert entry.state != READY
    assert "input 'z' is not in the model (it has: x)" in entry.reason
    assert closed == ["engine"]
    with pytest.raises(ModelLoadError):
        await ModelRepository(tmp_path / "absent").load()


async def test_broken_folders_are_refused_with_the_problem_and_the_place(tmp_path: Path) -> None:
    folder(tmp_path, "padded_version", 'backend: "fake"')
    (tmp_path / "padded_version" / "1").rename(tmp_path / "padded_version" / "001")
    folder(tmp_path, "zero_version", 'backend: "fake"')
    (tmp_path / "zero_version" / "1").rename(tmp_path / "zero_version" / "0")
    folder(tmp_path, "config_dir", None)
    (tmp_path / "config_dir" / "config.pbtxt").mkdir()
    folder(tmp_path, "fine", 'backend: "fake"')
    (tmp_path / "fine" / "notes").mkdir()  # not a version: ignored
    repository = ModelRepository(tmp_path, RepositoryOptions(loaders=Registry([FakeLoader()])))
    await repository.load()
    reasons = {e.name: e.reason for e in repository.entries()}
    assert "version folder '001' is not a version number" in reasons["padded_version"]
    assert "padded_version/001" in reasons["padded_version"]
    assert "version folder '0' is not a version number" in reasons["zero_version"]
    assert "config_dir/config.pbtxt: not a file" in reasons["config_dir"]
    assert repository.entry("fine").state == READY
    await repository.stop()
