"""Backends: the Engine/Instance contract (base.py) and one module per backend.

Only `engines.base` is imported by the scheduler; the server picks a backend module by the
model's platform when it loads the repository.
"""

from ferry.engines.base import Device, Engine, ExecutionResult, Instance, Parts, TensorSpec, Timings

__all__ = ["Device", "Engine", "ExecutionResult", "Instance", "Parts", "TensorSpec", "Timings"]
