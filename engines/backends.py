"""The backends Ferry ships, as the registry a server loads models with."""

from __future__ import annotations

from ferry.engines.loading import Registry
from ferry.engines.onnxruntime_loader import OnnxRuntimeLoader
from ferry.engines.tensorrt.loader import TensorRTLoader


def default_registry() -> Registry:
    """ONNX Runtime (CPU and CUDA) and TensorRT. TensorRT's own libraries load only when a
    plan is loaded, on a host with a GPU."""
    return Registry([OnnxRuntimeLoader(), TensorRTLoader()])
