"""Gathering a batch: each request's rows copied once, straight to their offset in one buffer."""

from __future__ import annotations

import numpy as np

from engines.base import Parts


def gather(parts: Parts, name: str) -> np.ndarray:
    """One array holding input `name` of every part, rows in order.

    A single part is passed through untouched (zero copies: it already is the batch). Otherwise
    one buffer is allocated for the whole batch and each part is copied into its row range once;
    `np.concatenate(out=...)` does that copy in C, without a per-row Python loop.
    """
    if len(parts) == 1:
        return parts[0][name]
    first = parts[0][name]
    rows = sum(int(p[name].shape[0]) for p in parts)
    out = np.empty((rows, *first.shape[1:]), dtype=first.dtype)
    np.concatenate([p[name] for p in parts], axis=0, out=out)
    return out
