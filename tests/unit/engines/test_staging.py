"""Gathering a batch: one copy per request, padded inputs filled into each request's corner."""

from __future__ import annotations

import numpy as np

from ferry.engines.base import Feed
from ferry.engines.staging import gather, gather_into


def test_gather_pads_each_part_into_its_corner_with_one_copy() -> None:
    parts = [
        {"x": np.array([[1, 2]], dtype=np.int64)},
        {"x": np.array([[3, 4, 5], [6, 7, 8]], dtype=np.int64)},
    ]
    batch = gather(Feed(parts, 3, {"x": ((4,), 0)}), "x")
    np.testing.assert_array_equal(batch, [[1, 2, 0, 0], [3, 4, 5, 0], [6, 7, 8, 0]])
    same = gather(Feed(parts[1:], 2, {"x": ((3,), 0)}), "x")
    assert same is parts[1]["x"]  # already the batch's shape: passed through, not copied


def test_gather_concatenates_rows_in_order() -> None:
    parts = [{"x": np.full((n, 2), float(n), dtype=np.float32)} for n in (1, 3, 2)]
    batch = gather(Feed(parts, 6), "x")
    np.testing.assert_array_equal(batch[:, 0], [1, 3, 3, 3, 2, 2])
    assert gather(Feed(parts[:1], 1), "x") is parts[0]["x"]


def test_gather_into_a_callers_buffer_copies_once_and_pads() -> None:
    parts = [
        {"x": np.array([[1, 2]], dtype=np.int64)},
        {"x": np.array([[3, 4, 5]], dtype=np.int64)},
    ]
    out = np.full((2, 4), 99, dtype=np.int64)
    gather_into(Feed(parts, 2, {"x": ((4,), 0)}), "x", out)
    np.testing.assert_array_equal(out, [[1, 2, 0, 0], [3, 4, 5, 0]])
    same = np.empty((2, 2), dtype=np.float32)
    flat = [{"y": np.ones((1, 2), np.float32)}, {"y": np.zeros((1, 2), np.float32)}]
    gather_into(Feed(flat, 2), "y", same)
    np.testing.assert_array_equal(same, [[1, 1], [0, 0]])
