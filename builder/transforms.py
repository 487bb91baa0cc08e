"""What turns the source ONNX file into the served one: ONNX Runtime's graph optimizations
applied once, offline, and INT8 static quantization in QDQ form (ONNX Runtime's quantizer)."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from ferry.builder.options import Calibration
from ferry.builder.samples import Samples
from ferry.common.errors import BuildError

CALIBRATION_BATCH = 256
"""Rows per calibration run: the histograms see every row either way."""

_METHODS = {
    Calibration.ENTROPY: CalibrationMethod.Entropy,
    Calibration.PERCENTILE: CalibrationMethod.Percentile,
    Calibration.MINMAX: CalibrationMethod.MinMax,
}


def optimize(source: Path, target: Path, level: str = "ORT_ENABLE_EXTENDED") -> None:
    """Save the graph as ONNX Runtime optimizes it, so that no server repeats the work at load.
    Extended, not all: the layout optimizations above it are specific to the CPU they ran on,
    and a repository travels between hosts."""
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.optimized_model_filepath = str(target)
    try:
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's own exception types
        raise BuildError(f"{source}: onnxruntime could not optimize it: {exc}") from exc


class _Reader(CalibrationDataReader):  # type: ignore[misc]  # ONNX Runtime's untyped base
    def __init__(self, samples: Samples, batch: int) -> None:
        self._batches = samples.batches(batch)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def reader(samples: Samples, batch: int = CALIBRATION_BATCH) -> CalibrationDataReader:
    """The rows in batches, as ONNX Runtime's quantization tools read their inputs."""
    return _Reader(samples, batch)


def quantize_int8(
    source: Path,
    target: Path,
    calibration: Samples,
    method: Calibration,
    percentile: float,
    symmetric: bool,
    per_channel: bool,
) -> None:
    """Static INT8 in QDQ form: weights symmetric (per channel when asked), activations from
    the calibration rows by `method`; `symmetric` makes activations signed with zero points 0,
    which TensorRT's explicit quantization needs. Otherwise activations are unsigned and
    asymmetric, which x86 CPUs' VNNI kernels run fastest."""
    extra: dict[str, object] = {"WeightSymmetric": True, "ActivationSymmetric": symmetric}
    if method is Calibration.PERCENTILE:
        extra["CalibPercentile"] = percentile
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(max(quiet, logging.ERROR))  # the quantizer logs advice at WARNING
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress
            quantize_static(
                str(source),
                str(target),
                reader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=_METHODS[method],
                extra_options=extra,
            )
    except BuildError:
        raise
    except Exception as exc:  # the quantizer raises what its steps raise
        raise BuildError(
            f"{source}: INT8 quantization failed: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        logging.getLogger().setLevel(quiet)
