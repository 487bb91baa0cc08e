"""Vocabulary shared by every layer: the error family and the tensor datatypes.

It imports nothing else of Ferry's, so `server`, `scheduler` and `engines` may all depend on it.
"""

from ferry.common.datatypes import DATATYPES, DataType, from_config_type
from ferry.common.errors import (
    CudaError,
    DeadlineExceeded,
    EngineError,
    FerryError,
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    QueueFull,
    QueueTimeout,
    ShuttingDown,
    Unavailable,
    Unsupported,
    shown,
)

__all__ = [
    "DATATYPES",
    "CudaError",
    "DataType",
    "DeadlineExceeded",
    "EngineError",
    "FerryError",
    "InvalidInput",
    "ModelLoadError",
    "ModelNotFound",
    "ModelNotReady",
    "QueueFull",
    "QueueTimeout",
    "ShuttingDown",
    "Unavailable",
    "Unsupported",
    "from_config_type",
    "shown",
]
