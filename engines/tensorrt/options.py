"""Settings of a TensorRT plan's instances, read from its model config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorRTOptions:
    """cuda_graphs: capture each batch shape's execution once and replay it (config
    `optimization { cuda { graphs: true } }`); max_graphs bounds how many shapes get one.
    in_flight: batches one instance holds at once (gathering the next overlaps computing this).
    """

    cuda_graphs: bool = False
    max_graphs: int = 64
    in_flight: int = 2
