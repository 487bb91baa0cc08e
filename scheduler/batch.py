"""A batch: requests that run together, and how outputs are cut back per request."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import EngineError
from engines.base import Parts
from scheduler.request import InferenceRequest


@dataclass
class Batch:
    """Requests in row order; request i owns rows offsets[i]:offsets[i+1] of every output."""

    requests: list[InferenceRequest]

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.requests)

    def parts(self) -> Parts:
        return [r.inputs for r in self.requests]

    def scatter(self, outputs: dict[str, np.ndarray], batched: bool) -> list[dict[str, np.ndarray]]:
        """Each request's slice of every output: views, no copies.

        Raises EngineError when an output does not have exactly the batch's rows (a backend
        that returns too few or too many rows must fail the batch, not misroute rows).
        """
        if not batched:
            return [outputs]
        total = self.rows
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != total:
                raise EngineError(
                    f"output '{name}' has {array.shape[0] if array.ndim else 0} rows "
                    f"for a batch of {total}"
                )
        answers: list[dict[str, np.ndarray]] = []
        start = 0
        for request in self.requests:
            end = start + request.rows
            answers.append({name: array[start:end] for name, array in outputs.items()})
            start = end
        return answers
