"""Gathering a batch: each request's rows copied once, straight to their offset in one buffer."""

from __future__ import annotations

import numpy as np

from ferry.engines.base import Feed


def gather(feed: Feed, name: str) -> np.ndarray:
    """One array holding input `name` of every part, rows in order.

    A single part that already has the batch's shape is passed through untouched (zero copies:
    it already is the batch). Otherwise one buffer is allocated for the whole batch and filled
    by gather_into().
    """
    parts = feed.parts
    first = parts[0][name]
    padded = feed.padded.get(name)
    shape = padded[0] if padded is not None else first.shape[1:]
    if len(parts) == 1 and first.shape[1:] == shape:
        return first
    out = np.empty((feed.rows, *shape), dtype=first.dtype)
    gather_into(feed, name, out)
    return out


def gather_into(feed: Feed, name: str, out: np.ndarray) -> None:
    """Copy input `name` of every part into `out` (a buffer the caller owns, e.g. pinned
    memory), rows in order: exactly one copy per request.

    `np.concatenate(out=...)` does the copies in C, without a per-row Python loop. A padded input
    whose parts are shorter than the batch's shape is filled with its pad value first and each
    part is copied into the corner of its rows (one slice assignment per request, also in C).
    """
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
