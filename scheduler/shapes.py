"""Shapes decide where a request waits and with whom: profile routing and padding.

A profile (engines.base.Profile) is a box of input shapes plus the most rows one of its batches
may hold. TensorRT engines carry their profiles; ONNX models declare them in config.pbtxt
parameters (see server/model_config.py). Each instance is bound to one profile for life, and each
profile has its own queue, so a batch never makes an instance switch profiles.

Padding lets requests whose lengths differ in a variable dimension share a batch: that dimension
is filled with the input's pad value up to the longest request of the batch (or a bucket
boundary), and outputs that carry the dimension are cut back to each request's own length.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from ferry.common.errors import InvalidInput
from ferry.engines.base import Profile

Shape = tuple[int, ...]
Shapes = Mapping[str, Shape]


def smallest_first(profiles: Sequence[Profile]) -> list[Profile]:
    """Profiles in the order route() tries them: by volume, then by batch size (a profile
    without its own row limit last), then index."""
    return sorted(profiles, key=lambda p: (p.volume, p.max_rows or math.inf, p.index))


def route(profiles: Sequence[Profile], shapes: Shapes, rows: int = 0) -> Profile:
    """The first of `profiles` (ordered by smallest_first) whose ranges hold every shape and
    whose batches can hold `rows`; when the shapes fit but no profile takes that many rows,
    the fitting one with the largest batches (the request is then split into its chunks).

    Plans often differ only in batch size (profile 0 up to 64 rows, profile 1 up to 1024):
    small requests go to the small profile, large ones to the large one.
    Raises InvalidInput naming every profile's ranges when none fits.
    """
    fitting = [p for p in profiles if p.fits(shapes)]
    for profile in fitting:
        if not profile.max_rows or rows <= profile.max_rows:
            return profile
    if fitting:
        return max(fitting, key=lambda p: p.max_rows)
    got = ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
    ranges = "; ".join(p.describe() for p in profiles)
    raise InvalidInput(f"input shapes ({got}) fit no optimization profile: {ranges}")


@dataclass(frozen=True)
class PaddedInput:
    """An input whose variable dims may be padded: which axes, with what, to which buckets.

    axes: indexes into the non-batch dims (the model's -1 dims).
    buckets: lengths a padded axis is rounded up to (sorted); empty = the batch's longest.
    """

    value: int | float
    axes: tuple[int, ...]
    buckets: tuple[int, ...] = ()


@dataclass(frozen=True)
class CutOutput:
    """An output whose axes follow a padded input's: each request gets its own length back."""

    input: str
    axes: tuple[int, ...]  # non-batch axes of the output, matched in order to the input's axes


@dataclass(frozen=True)
class Padding:
    inputs: Mapping[str, PaddedInput] = field(default_factory=dict)
    outputs: Mapping[str, CutOutput] = field(default_factory=dict)

    def batch_key(self, shapes: Shapes) -> Hashable:
        """Requests with equal keys may share a batch: equal shapes, padded axes aside."""
        if not self.inputs:
            return tuple(shapes.items())
        key = []
        for name, shape in shapes.items():
            padded = self.inputs.get(name)
            if padded is not None:
                shape = tuple(-1 if i in padded.axes else d for i, d in enumerate(shape))
            key.append((name, shape))
        return tuple(key)

    def batch_shapes(self, members: Sequence[Shapes], profile: Profile) -> dict[str, Shape]:
        """Padded non-batch shape of each padded input for a batch of `members`.

        The longest member per axis, rounded up to the next bucket, never beyond the profile's
        max for that axis (so the padded batch still fits the profile it runs on).
        """
        out: dict[str, Shape] = {}
        for name, padded in self.inputs.items():
            longest = list(members[0][name])
            for shapes in members[1:]:
                for axis in padded.axes:
                    longest[axis] = max(longest[axis], shapes[name][axis])
            limit = profile.ranges.get(name)
            for axis in padded.axes:
                length = longest[axis]
                for bucket in padded.buckets:
                    if bucket >= length:
                        length = bucket
                        break
                if limit is not None:
                    length = min(length, limit.max[axis])
                longest[axis] = max(length, longest[axis])
            out[name] = tuple(longest)
        return out


NO_PADDING = Padding()
"""The padding of a model without padded inputs (immutable, so one instance serves all)."""
