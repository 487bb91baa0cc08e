"""Capture keeps a copy of sampled request inputs, per model, within its byte bound, and never
makes a request wait for the disk."""

from __future__ import annotations

import queue
from pathlib import Path

import numpy as np
import pytest

from ferry.server import capture as capture_module
from ferry.server.capture import Capture, CaptureConfig


def files(root: Path, model: str) -> list[Path]:
    return sorted((root / model).glob("*.npz"))


def test_every_sampled_request_is_written_per_model_as_it_was_sent(tmp_path: Path) -> None:
    capture = Capture(CaptureConfig(tmp_path, sample=1.0))
    buffer = np.arange(8, dtype=np.float32)
    capture.offer("a", {"x": buffer.reshape(2, 4)})
    buffer[:] = -1  # the caller's buffer (a shared-memory region) changes after the answer
    capture.offer("b", {"x": np.ones((1, 4), np.float32), "ids": np.array([[7]], np.int64)})
    capture.close()
    (a,) = files(tmp_path, "a")
    (b,) = files(tmp_path, "b")
    with np.load(a) as data:
        np.testing.assert_array_equal(data["x"], np.arange(8, dtype=np.float32).reshape(2, 4))
    with np.load(b) as data:
        assert sorted(data.files) == ["ids", "x"] and data["ids"].dtype == np.int64
    assert not list(tmp_path.rglob(".*"))  # no partial file left


def test_capture_stops_at_its_byte_bound(tmp_path: Path) -> None:
    capture = Capture(CaptureConfig(tmp_path, sample=1.0, max_bytes=100))
    for _ in range(10):
        capture.offer("m", {"x": np.zeros((1, 10), np.float32)})  # 40 bytes each
    capture.close()
    assert len(files(tmp_path, "m")) == 2
    assert capture.taken_bytes == 80


def test_only_the_sampled_share_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([0.5, 0.05, 0.9, 0.01])
    monkeypatch.setattr(capture_module.random, "random", lambda: next(draws))
    capture = Capture(CaptureConfig(tmp_path, sample=0.1))
    for value in range(4):
        capture.offer("m", {"x": np.full((1, 1), value, np.float32)})
    capture.close()
    kept = []
    for path in files(tmp_path, "m"):
        with np.load(path) as data:
            kept.append(float(data["x"][0, 0]))
    assert kept == [1.0, 3.0]


def test_a_writer_that_falls_behind_drops_samples_instead_of_blocking(tmp_path: Path) -> None:
    capture = Capture(CaptureConfig(tmp_path, sample=1.0))
    full: queue.Queue[object] = queue.Queue(1)
    full.put(("m", {}))
    real, capture._queue = capture._queue, full  # type: ignore[assignment]
    capture.offer("m", {"x": np.zeros((1, 4), np.float32)})  # returns at once
    assert capture.dropped == 1 and capture.taken_bytes == 0
    capture._queue = real
    capture.close()


@pytest.mark.parametrize(("sample", "max_bytes"), [(0.0, 1), (1.5, 1), (0.5, 0)])
def test_settings_out_of_range_are_refused(tmp_path: Path, sample: float, max_bytes: int) -> None:
    with pytest.raises(ValueError, match="capture"):
        CaptureConfig(tmp_path, sample, max_bytes)
