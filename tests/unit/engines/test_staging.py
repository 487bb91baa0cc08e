"""Gathering a batch: one copy per request, padded inputs filled into each request's corner."""

from __future__ import annotations

import numpy as np

from engines.base import Feed
from engines.staging import gather


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
