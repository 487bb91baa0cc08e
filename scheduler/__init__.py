"""Requests, queues, dynamic batching and dispatch to instances: pure asyncio and numpy.

The scheduler knows nothing of gRPC or protobuf and knows backends only through engines.base.
"""

from scheduler.batch import Batch
from scheduler.batcher import Batcher
from scheduler.config import BatchingConfig, QueuePolicy, TimeoutAction
from scheduler.request import InferenceRequest, InferenceResult
from scheduler.runner import ProfileRunner
from scheduler.scheduler import ModelScheduler
from scheduler.shapes import CutOutput, PaddedInput, Padding
from scheduler.stats import ModelStats

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
