"""What turns the source ONNX file into the served one: ONNX Runtime's graph optimizations
applied once, offline; INT8 static quantization in QDQ form (ONNX Runtime's quantizer); FP16
with the nodes that would overflow kept in FP32 (ONNX Runtime's converter); BF16 for TensorRT."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
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
    except Exception as exc:  # the quantizer raises what its steps raise
        raise BuildError(
            f"{source}: INT8 quantization failed: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        logging.getLogger().setLevel(quiet)


FP16_LIMIT = 65504.0 / 4
"""An activation whose magnitude comes within 4x of FP16's largest value on the sample keeps
its node in FP32: traffic beyond the sample would overflow it."""

FP16_SAMPLE_ROWS = 256


def to_fp16(source: Path, target: Path, sample: Samples) -> list[str]:
    """FP16 weights and compute, inputs and outputs left FP32 (casts inside), except the nodes
    that make or take a tensor that would overflow FP16 on the sample's rows, which stay FP32;
    returns their names."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        modify_model_output_intermediate_tensors,
    )
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    for index, node in enumerate(model.graph.node):
        node.name = node.name or f"{node.op_type}_{index}"  # the converter keeps nodes by name
    with tempfile.TemporaryDirectory(prefix="ferry-fp16-") as work:
        named, augmented = Path(work) / "named.onnx", Path(work) / "augmented.onnx"
        onnx.save(model, str(named))
        modify_model_output_intermediate_tensors(str(named), str(augmented))
        rows = sample.take(np.arange(min(FP16_SAMPLE_ROWS, sample.rows)))
        activations = collect_activations(str(augmented), reader(rows))
    largest = {
        name: max(float(np.abs(v).max(initial=0.0)) for v in values)
        for name, values in activations.items()
        if values and all(np.issubdtype(v.dtype, np.floating) for v in values)
    }
    kept = [  # a node that makes or takes such a tensor: FP16 cannot hold it either way
        node.name
        for node in model.graph.node
        if any(largest.get(name, 0.0) > FP16_LIMIT for name in (*node.input, *node.output))
    ]
    try:
        converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=kept)
    except Exception as exc:  # the converter raises what its steps raise
        raise BuildError(f"{source}: FP16 conversion failed: {type(exc).__name__}: {exc}") from exc
    _drop_round_trips(converted)
    onnx.save(converted, str(target))
    return kept


def _drop_round_trips(model: onnx.ModelProto) -> None:
    """Remove FP32 -> FP16 -> FP32 cast pairs: the converter puts them on every edge between
    two nodes it kept in FP32 (and after an FP32 input that feeds one), where they would round,
    or overflow, exactly the tensor that was kept in FP32."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)

    def casts_to(node: onnx.NodeProto, kind: int) -> bool:
        return node.op_type == "Cast" and any(
            a.name == "to" and a.i == kind for a in node.attribute
        )

    dropped: set[int] = set()
    renamed: dict[str, str] = {}
    for node in graph.node:
        if not casts_to(node, onnx.TensorProto.FLOAT16) or node.output[0] in outputs:
            continue
        back = users.get(node.output[0], [])
        if not back or not all(casts_to(u, onnx.TensorProto.FLOAT) for u in back):
            continue
        if any(u.output[0] in outputs for u in back):
            continue
        dropped.add(id(node))
        for u in back:
            dropped.add(id(u))
            renamed[u.output[0]] = node.input[0]
    kept = [n for n in graph.node if id(n) not in dropped]
    for node in kept:
        for index, name in enumerate(node.input):
            node.input[index] = renamed.get(name, name)
    del graph.node[:]
    graph.node.extend(kept)


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """FP32 values as BF16 bit patterns (uint16), rounded to nearest, ties to even."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def bf16_rounded(values: np.ndarray) -> np.ndarray:
    """FP32 values rounded to what BF16 holds, kept as FP32."""
    return (bf16_bits(values).astype(np.uint32) << np.uint32(16)).view(np.float32)


def to_bf16(source: Path, target: Path, emulation: Path) -> None:
    """A BF16 graph for TensorRT: every FP32 weight and constant stored as BF16, FP32 inputs cast
    to BF16 where they enter and outputs cast back where they leave, casts to FP32 inside the
    graph made casts to BF16. BF16 keeps FP32's exponent range: nothing overflows that FP32 holds.

    `emulation`: the FP32 graph with every weight rounded to BF16, which ONNX Runtime on this
    host's CPU can run (it has no BF16 kernels for most operators): what the gate checks."""
    model = onnx.load(str(source))
    rounded = onnx.load(str(source))
    for initializer in rounded.graph.initializer:
        if initializer.data_type == onnx.TensorProto.FLOAT:
            values = numpy_helper.to_array(initializer)
            initializer.CopyFrom(numpy_helper.from_array(bf16_rounded(values), initializer.name))
    onnx.save(rounded, str(emulation))

    graph = model.graph
    bf16 = onnx.TensorProto.BFLOAT16
    for index, initializer in enumerate(graph.initializer):
        if initializer.data_type == onnx.TensorProto.FLOAT:
            graph.initializer[index].CopyFrom(_bf16_tensor(initializer))
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.name == "value" and attribute.t.data_type == onnx.TensorProto.FLOAT:
                attribute.t.CopyFrom(_bf16_tensor(attribute.t))
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == 1:
                attribute.i = bf16
    renamed: dict[str, str] = {}
    casts_in = []
    for value in graph.input:
        if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            inner = f"{value.name}_bf16"
            renamed[value.name] = inner
            casts_in.append(
                helper.make_node(
                    "Cast", [value.name], [inner], to=bf16, name=f"{value.name}_to_bf16"
                )
            )
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in renamed:
                node.input[index] = renamed[name]
    casts_out = []
    for value in graph.output:
        if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            inner = f"{value.name}_bf16"
            for node in graph.node:
                for index, name in enumerate(node.output):
                    if name == value.name:
                        node.output[index] = inner
            casts_out.append(
                helper.make_node(
                    "Cast",
                    [inner],
                    [value.name],
                    to=onnx.TensorProto.FLOAT,
                    name=f"{value.name}_to_fp32",
                )
            )
    nodes = [*casts_in, *graph.node, *casts_out]
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [v for v in graph.value_info if v.type.tensor_type.elem_type != onnx.TensorProto.FLOAT]
    del graph.value_info[:]
    graph.value_info.extend(kept)  # intermediate FP32 types are BF16 now: let the parser infer
    onnx.save(model, str(target))


def _bf16_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    values = numpy_helper.to_array(tensor)
    converted = onnx.TensorProto()
    converted.name = tensor.name
    converted.data_type = onnx.TensorProto.BFLOAT16
    converted.dims.extend(values.shape)
    converted.raw_data = bf16_bits(values).tobytes()
    return converted
