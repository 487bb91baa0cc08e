"""Requests, queues, dynamic batching and dispatch to instances: pure asyncio and numpy.

The scheduler knows nothing of gRPC or protobuf and knows backends only through engines.base.
"""

from ferry.scheduler.batch import Batch
from ferry.scheduler.batcher import Batcher
from ferry.scheduler.config import BatchingConfig, QueuePolicy, TimeoutAction
from ferry.scheduler.request import InferenceRequest, InferenceResult
from ferry.scheduler.runner import ProfileRunner
from ferry.scheduler.scheduler import ModelScheduler
from ferry.scheduler.shapes import CutOutput, PaddedInput, Padding
from ferry.scheduler.stats import ModelStats

__all__ = [
    "Batch",
    "Batcher",
    "BatchingConfig",
    "CutOutput",
    "InferenceRequest",
    "InferenceResult",
    "ModelScheduler",
    "ModelStats",
    "PaddedInput",
    "Padding",
    "ProfileRunner",
    "QueuePolicy",
    "TimeoutAction",
]
