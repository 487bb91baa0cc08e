"""What a repository's models weigh when loaded, as `--workers auto` counts it: the files of the
versions each model's version policy serves, of the models loaded at start."""

from __future__ import annotations

from pathlib import Path

from ferry.server.model_control import loaded_at_start
from ferry.server.repository import serving_bytes


def _model(root: Path, name: str, sizes: dict[int, int], config: str | None = "") -> None:
    folder = root / name
    for version, size in sizes.items():
        (folder / str(version) / "sub").mkdir(parents=True)
        (folder / str(version) / "model.onnx").write_bytes(b"x" * size)
        (folder / str(version) / "sub" / "weights.bin").write_bytes(b"w" * size)
    if config is not None:
        (folder / "config.pbtxt").write_text(f'name: "{name}"\n{config}')


def test_counts_the_versions_each_policy_serves(tmp_path: Path) -> None:
    _model(tmp_path, "newest", {1: 1000, 2: 10})  # the default policy: the newest only
    _model(tmp_path, "no_config", {3: 7, 12: 5}, config=None)  # 12 is newer than 3
    _model(tmp_path, "every", {1: 100, 2: 200}, "version_policy: { all { } }")
    latest = "version_policy: { latest { num_versions: 2 } }"
    _model(tmp_path, "two", {1: 1, 2: 20, 3: 300}, latest)
    specific = "version_policy: { specific { versions: [1, 3] } }"
    _model(tmp_path, "named", {1: 4000, 2: 50, 3: 6}, specific)
    assert serving_bytes(tmp_path) == 2 * (10 + 5 + 100 + 200 + 20 + 300 + 4000 + 6)


def test_counts_only_the_models_named(tmp_path: Path) -> None:
    _model(tmp_path, "a", {1: 10})
    _model(tmp_path, "b", {1: 1000})
    assert serving_bytes(tmp_path, ["a"]) == 20
    assert serving_bytes(tmp_path, []) == 0
    assert serving_bytes(tmp_path, ["a", "b", "absent"]) == 2020


def test_what_cannot_load_counts_nothing(tmp_path: Path) -> None:
    _model(tmp_path, "good", {1: 10})
    _model(tmp_path, "bad_config", {1: 1000}, "this is not a config")
    _model(tmp_path, "missing_version", {1: 1000}, "version_policy: { specific { versions: [9] } }")
    (tmp_path / "no_versions").mkdir()
    _model(tmp_path, ".hidden", {1: 1000})
    (tmp_path / "stray_file").write_bytes(b"s" * 1000)
    assert serving_bytes(tmp_path) == 20
    assert serving_bytes(tmp_path / "absent") == 0


def test_the_models_loaded_at_start_follow_the_control_mode() -> None:
    assert loaded_at_start("none", ()) is None
    assert loaded_at_start("poll", ()) is None
    assert loaded_at_start("explicit", ()) == []
    assert loaded_at_start("explicit", ("a", "b")) == ["a", "b"]
    assert loaded_at_start("explicit", ("a", "*")) is None
