"""A batch: requests that run together, how they are fed, and how outputs are cut back."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ferry.common.errors import EngineError
from ferry.engines.base import Feed
from ferry.scheduler.request import InferenceRequest
from ferry.scheduler.shapes import NO_PADDING, Padding


@dataclass
class Batch:
    """Requests in row order; request i owns rows offsets[i]:offsets[i+1] of every output.

    `padded` maps each padded input to the batch's padded non-batch shape (empty when the model
    has no padded inputs); `padding` says pad values and which outputs to cut back.
    """

    requests: list[InferenceRequest]
    padded: dict[str, tuple[int, ...]] = field(default_factory=dict)
    padding: Padding = NO_PADDING

    @cached_property
    def rows(self) -> int:
        """Rows of all requests (summed once: feeding, scattering and statistics all ask)."""
        return sum(r.rows for r in self.requests)

    def feed(self) -> Feed:
        return Feed(
            [r.inputs for r in self.requests],
            self.rows,
            {name: (shape, self.padding.inputs[name].value) for name, shape in self.padded.items()},
        )

    def padding_ratio(self) -> float:
        """Share of padded input elements that are padding (0 when nothing is padded)."""
        total = pad = 0
        for name, shape in self.padded.items():
            per_row = int(np.prod(shape))
            for request in self.requests:
                own = int(np.prod(request.shapes[name]))
                total += per_row * request.rows
                pad += (per_row - own) * request.rows
        return pad / total if total else 0.0

    def scatter(self, outputs: dict[str, np.ndarray], batched: bool) -> list[dict[str, np.ndarray]]:
        """Each request's slice of every output: views, no copies.

        Outputs that carry a padded axis are cut back to the request's own length. Raises
        EngineError when an output does not have exactly the batch's rows (a backend that
        returns too few or too many rows must fail the batch, not misroute rows).
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
        cuts = {
            name: cut
            for name, cut in self.padding.outputs.items()
            if name in outputs and cut.input in self.padded
        }
        answers: list[dict[str, np.ndarray]] = []
        start = 0
        for request in self.requests:
            end = start + request.rows
            answer = {name: array[start:end] for name, array in outputs.items()}
            for name, cut in cuts.items():
                own = request.shapes[cut.input]
                axes = self.padding.inputs[cut.input].axes
                index: list[slice] = [slice(None)] * answer[name].ndim
                for out_axis, in_axis in zip(cut.axes, axes, strict=True):
                    index[out_axis + 1] = slice(0, own[in_axis])
                answer[name] = answer[name][tuple(index)]
            answers.append(answer)
            start = end
        return answers
