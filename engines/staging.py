"""Gathering a batch: each request's rows copied once, straight to their offset in one buffer."""

from __future__ import annotations

import numpy as np

from engines.base import Feed


def gather(feed: Feed, name: str) -> np.ndarray:
    """One array holding input `name` of every part, rows in order.

    A single unpadded part is passed through untouched (zero copies: it already is the batch).
    Otherwise one buffer is allocated for the whole batch and each part is copied into its row
    range once; `np.concatenate(out=...)` does that copy in C, without a per-row Python loop.
    A padded input's buffer is filled with the pad value first and each part is copied into the
    corner of its rows (one slice assignment per request, also in C).
    """
    parts = feed.parts
    first = parts[0][name]
    padded = feed.padded.get(name)
    if padded is not None:
        shape, value = padded
        if any(p[name].shape[1:] != shape for p in parts):
            return _gather_padded(feed, name, shape, value, first.dtype)
    if len(parts) == 1:
        return first
    out = np.empty((feed.rows, *first.shape[1:]), dtype=first.dtype)
    np.concatenate([p[name] for p in parts], axis=0, out=out)
    return out


def _gather_padded(
    feed: Feed, name: str, shape: tuple[int, ...], value: int | float, dtype: np.dtype
) -> np.ndarray:
    out = np.full((feed.rows, *shape), value, dtype=dtype)
    start = 0
    for part in feed.parts:
        array = part[name]
        end = start + array.shape[0]
        out[(slice(start, end), *(slice(0, d) for d in array.shape[1:]))] = array
        start = end
    return out


def gather_into(feed: Feed, name: str, out: np.ndarray) -> None:
    """Like gather(), but into `out` (a staging buffer the caller owns, e.g. pinned memory):
    exactly one copy per request, padded inputs filled with their pad value first."""
    padded = feed.padded.get(name)
    if padded is not None and any(p[name].shape[1:] != out.shape[1:] for p in feed.parts):
        out.fill(padded[1])
        start = 0
        for part in feed.parts:
            array = part[name]
            end = start + array.shape[0]
            out[(slice(start, end), *(slice(0, d) for d in array.shape[1:]))] = array
            start = end
        return
    np.concatenate([p[name] for p in feed.parts], axis=0, out=out)
