"""The contract between the scheduler and a backend: an Engine makes Instances that run batches.

An Engine is a loaded model artifact (an ONNX file, a TensorRT plan): it knows its tensors and
makes Instances. An Instance is one execution context with whatever it owns (a session, a CUDA
stream, staging buffers); it runs one batch at a time. The scheduler sees nothing else of a
backend, so a fake engine in memory can stand in for a real one in tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from common.datatypes import DataType


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor: its element type and its dims (-1 marks a variable dimension).

    `dims` exclude the batch dimension when the model is batched (max_batch_size > 0).
    """

    name: str
    datatype: DataType
    dims: tuple[int, ...]


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
"""A batch as the engine receives it: each request's inputs, in row order, not yet gathered."""


class Instance(Protocol):
    """One execution context. `run` may be awaited again only after the previous one finished."""

    @property
    def name(self) -> str: ...

    async def run(self, parts: Parts) -> ExecutionResult:
        """Gather `parts` into one batch (one copy per request and input), run, return outputs.

        For a batched model the outputs' first dimension is the sum of the parts' rows; for an
        unbatched model (max_batch_size 0) `parts` holds exactly one request.
        """
        ...

    async def close(self) -> None: ...


class Engine(Protocol):
    """A loaded model artifact that can make instances of itself."""

    @property
    def inputs(self) -> Sequence[TensorSpec]:
        """The artifact's own inputs, with the batch dimension included as the first dim."""
        ...

    @property
    def outputs(self) -> Sequence[TensorSpec]: ...

    def create_instance(self, name: str, device: Device) -> Instance: ...

    def close(self) -> None: ...
