"""The contract between the scheduler and a backend: an Engine makes Instances that run batches.

An Engine is a loaded model artifact (an ONNX file, a TensorRT plan): it knows its tensors and
makes Instances. An Instance is one execution context with whatever it owns (a session, a CUDA
stream, staging buffers); it runs one batch at a time. The scheduler sees nothing else of a
backend, so a fake engine in memory can stand in for a real one in tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ferry.common.datatypes import DataType


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor: its element type and its dims (-1 marks a variable dimension).

    `dims` exclude the batch dimension when the model is batched (max_batch_size > 0).
    """

    name: str
    datatype: DataType
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ShapeRange:
    """Inclusive bounds of one input's non-batch dims; `opt` is what the engine tuned for."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        if not len(self.min) == len(self.opt) == len(self.max):
            raise ValueError(f"min/opt/max ranks differ: {self.min} {self.opt} {self.max}")
        for lo, mid, hi in zip(self.min, self.opt, self.max, strict=True):
            if not 0 <= lo <= mid <= hi:
                raise ValueError(f"need 0 <= min <= opt <= max, got {lo}, {mid}, {hi}")

    def contains(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.min) and all(
            lo <= d <= hi for lo, d, hi in zip(self.min, shape, self.max, strict=True)
        )

    def __str__(self) -> str:
        return f"{list(self.min)}..{list(self.max)}"


@dataclass(frozen=True)
class Profile:
    """One optimization profile: a box of input shapes that one instance serves for life.

    index: the profile's number (TensorRT's profile index; config order for ONNX models).
    ranges: shape bounds (batch dimension excluded) of the inputs it constrains; an input not
        named here may take any shape its model dims allow.
    max_rows: most rows in one batch on this profile; 0 = the model's max_batch_size.
    """

    index: int = 0
    ranges: Mapping[str, ShapeRange] = field(default_factory=dict)
    max_rows: int = 0

    def fits(self, shapes: Mapping[str, tuple[int, ...]]) -> bool:
        return all(r.contains(shapes[name]) for name, r in self.ranges.items() if name in shapes)

    def batch_rows(self, max_batch_size: int) -> int:
        """Most rows one batch on this profile may hold: the smaller of its own limit and the
        model's max_batch_size (0 where neither sets one)."""
        limits = [n for n in (self.max_rows, max_batch_size) if n > 0]
        return min(limits) if limits else 0

    @property
    def volume(self) -> int:
        """Elements of the largest shapes it admits: what "smallest profile" compares."""
        return sum(math.prod(r.max) for r in self.ranges.values())

    def describe(self) -> str:
        inside = ", ".join(f"{name} {r}" for name, r in self.ranges.items()) or "any shape"
        return f"profile {self.index} ({inside})"


UNBOUNDED = Profile()
"""The profile of a model that declares none: every shape its dims allow."""


@dataclass(frozen=True)
class Device:
    """Where an instance runs: `cpu`, or `gpu` with a CUDA device index."""

    kind: str = "cpu"
    index: int = 0

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"{self.kind}:{self.index}"


@dataclass(frozen=True)
class Timings:
    """Nanoseconds spent on one batch: gathering inputs, running the model, producing outputs."""

    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0


@dataclass
class ExecutionResult:
    """What an instance hands back for a batch: outputs with the batch's rows first."""

    outputs: dict[str, np.ndarray]
    timings: Timings = field(default_factory=Timings)


Parts = Sequence[Mapping[str, np.ndarray]]
"""Each request's inputs, in row order, not yet gathered."""


@dataclass(frozen=True)
class Feed:
    """A batch as an instance receives it.

    parts: each request's inputs, in row order, not yet gathered (the instance gathers them
        straight into its own staging buffer: one copy per request and input).
    rows: the batch's rows (the sum of the parts' rows for a batched model).
    padded: for each padded input, the non-batch shape of the batch and the pad value; a part
        shorter than that shape fills the corner of its rows, the rest holds the pad value.
    """

    parts: Parts
    rows: int
    padded: Mapping[str, tuple[tuple[int, ...], int | float]] = field(default_factory=dict)


class Instance(Protocol):
    """One execution context: everything the scheduler asks of a backend's instance."""

    @property
    def name(self) -> str: ...

    @property
    def profile(self) -> Profile:
        """The optimization profile this instance serves for its whole life."""
        ...

    @property
    def device(self) -> Device: ...

    @property
    def in_flight(self) -> int:
        """How many batches it may hold at once: 1 gets the next batch only once the previous
        one finished; a GPU instance with several staging slots takes that many."""
        ...

    @property
    def inline(self) -> bool:
        """Whether `run_now` may ever run a batch; the scheduler skips it for instances that
        never do (GPU instances)."""
        ...

    def run_now(self, feed: Feed) -> ExecutionResult | None:
        """Run the batch synchronously on the caller's thread (the event loop) when that is
        cheaper than handing it off; None when it must go through `run`. The CPU backend does
        so for tiny batches (engines/onnxruntime.py): the scheduler then skips a task and its
        wake-ups."""
        ...

    async def run(self, feed: Feed) -> ExecutionResult:
        """Gather the feed into one batch (one copy per request and input), run, return outputs.

        For a batched model the outputs' first dimension is `feed.rows`; for an unbatched model
        (max_batch_size 0) the feed holds exactly one request.
        """
        ...

    async def warm(self, feed: Feed) -> None:
        """Run one warm-up batch (`model_warmup`) before the instance serves. The CPU backend
        runs it on the loading thread, at the loading priority, so that a version warming up
        beside a serving one takes little of its CPU; device backends run it as a batch."""
        ...

    async def close(self) -> None: ...


class OffLoop:
    """For instances that never run a batch on the event loop (their work waits on a device):
    `run_now` always declines, and a warm-up batch is a batch like any other."""

    inline = False

    def run_now(self, feed: Feed) -> ExecutionResult | None:
        return None

    async def warm(self: Instance, feed: Feed) -> None:
        await self.run(feed)


class Engine(Protocol):
    """A loaded model artifact that can make instances of itself."""

    @property
    def inputs(self) -> Sequence[TensorSpec]:
        """The artifact's own inputs, with the batch dimension included as the first dim."""
        ...

    @property
    def outputs(self) -> Sequence[TensorSpec]: ...

    @property
    def profiles(self) -> Sequence[Profile]:
        """Profiles the artifact itself carries (TensorRT); empty when it has none (ONNX)."""
        ...

    def create_instance(self, name: str, device: Device, profile: Profile) -> Instance: ...

    def close(self) -> None: ...
