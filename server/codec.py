"""Wire messages to arrays and back, validating every input against the model's tensors.

Decoding makes numpy views over `raw_input_contents` (no copy) after checking, for every input,
name, datatype, shape against dims, batch size and byte size; each error names the tensor. Typed
`contents` are accepted too. Encoding always answers in `raw_output_contents` (tritonclient reads
only that), one entry per output, aligned by position.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ferry.common.datatypes import DATATYPES, DataType
from ferry.common.errors import InvalidInput, Unsupported, shown
from ferry.engines.base import TensorSpec
from ferry.proto import grpc_service_pb2 as pb

_LENGTH = struct.Struct("<I")
_INT_RANGE = {
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
}
# The wire type of each typed-contents field, before narrowing to the tensor's datatype.
_CONTENTS_DTYPE = {
    "bool_contents": np.bool_,
    "int_contents": np.int32,
    "int64_contents": np.int64,
    "uint_contents": np.uint32,
    "uint64_contents": np.uint64,
    "fp32_contents": np.float32,
    "fp64_contents": np.float64,
}
# Request parameters with a protocol meaning that Ferry does not implement: refuse, never ignore.
_UNSUPPORTED_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")


@dataclass(frozen=True)
class Signature:
    """What a request is checked against: the model's tensors and batch limit (from config)."""

    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    max_batch_size: int
    # The backend stores BYTES as text (ONNX Runtime): every element must be valid UTF-8, checked
    # here so that one caller's bad string fails its own request, not a whole batch.
    utf8_bytes: bool = False
    # More rows than max_batch_size are accepted (the scheduler splits them into chunks).
    split_oversized: bool = False
    # config `reshape`: the model's own dims (batch excluded) of a tensor whose config dims
    # differ; requests and answers use the config dims, the engine the model's.
    reshape_inputs: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    reshape_outputs: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    # config `label_filename`: each output's labels, for the classification extension.
    labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @cached_property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each input's full expected shape, the batch dimension (-1) first when batched."""
        batch = (-1,) if self.max_batch_size > 0 else ()
        return {name: batch + spec.dims for name, spec in self.inputs.items()}

    @cached_property
    def output_row_bytes(self) -> int:
        """Bytes of one row of every output (a variable dim counted as 1, a string as 16 bytes):
        what the memory budget expects a request's answer to hold per row."""
        total = 0
        for spec in self.outputs.values():
            elements = math.prod(max(d, 1) for d in spec.dims)
            total += elements * (spec.datatype.itemsize or 16)
        return total

    @cached_property
    def output_names(self) -> tuple[str, ...]:
        """Every output, in the model's order: what a request that names none gets."""
        return tuple(self.outputs)


@dataclass
class DecodedRequest:
    """A validated request: arrays, rows, requested outputs and the scheduling parameters.

    priority: the `priority` parameter (0 = the model's default level).
    timeout_s: the `timeout` parameter (sent in microseconds; queue time only), or None.
    nbytes: the input bytes as received, which the model's queue bound counts.
    """

    inputs: dict[str, np.ndarray]
    rows: int
    outputs: tuple[str, ...]
    priority: int = 0
    timeout_s: float | None = None
    nbytes: int = 0
    classification: dict[str, int] = field(default_factory=dict)  # output -> top k


Buffer = bytes | memoryview
"""An input's data as a front end holds it: protobuf's bytes, or a view into an HTTP body."""


def decode(
    request: pb.ModelInferRequest, sig: Signature, raw: Sequence[Buffer] | None = None
) -> DecodedRequest:
    """Validated arrays for `request`; InvalidInput naming the tensor for anything wrong.
    `raw`, when given, holds every input's data (in the order of `request.inputs`) instead of
    `request.raw_input_contents`; arrays are views over it, not copies.

    Every request passes here, so the common case (raw contents, no parameters, every output)
    takes the fewest steps: in a busy server it runs with cold caches, at several times what a
    loop of calls in one process suggests (bench/serving_core.py measures the whole path)."""
    parameters = request.parameters
    if parameters:
        for param in _UNSUPPORTED_PARAMETERS:
            if param in parameters:
                raise Unsupported(
                    f"request parameter '{param}': sequence batching is not supported"
                )
    if raw is None:
        raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "it needs one entry per input, in the order of inputs"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        spec = sig.inputs.get(tensor.name)
        if spec is None:
            known = ", ".join(sig.inputs) or "none"
            raise InvalidInput(
                f"unknown input '{shown(tensor.name)}' (the model's inputs: {known})"
            )
        if tensor.name in inputs:
            raise InvalidInput(f"input '{shown(tensor.name)}' is given more than once")
        shape = _check_shape(tensor, spec, sig)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    f"input '{tensor.name}' has typed contents although raw_input_contents is "
                    "used; send every input one way"
                )
            inputs[tensor.name] = raw_tensor(raw[index], shape, spec)
        else:
            inputs[tensor.name] = _from_contents(tensor, shape, spec)
        if sig.utf8_bytes and spec.datatype.name == "BYTES":
            _check_utf8(inputs[tensor.name], tensor.name)
    if len(inputs) != len(sig.inputs):  # every given name is known and given once: some missing
        missing = [name for name in sig.inputs if name not in inputs]
        raise InvalidInput(f"missing input(s): {', '.join(repr(m) for m in missing)}")
    rows = _rows(inputs, sig)
    if sig.reshape_inputs:
        batch = (rows,) if sig.max_batch_size > 0 else ()
        for name, dims in sig.reshape_inputs.items():
            inputs[name] = inputs[name].reshape(batch + dims)  # a view: the bytes are the same
    priority = timeout_us = 0
    if parameters:
        priority = _integer_parameter(request, "priority")
        timeout_us = _integer_parameter(request, "timeout")
    nbytes = sum(map(len, raw)) if raw else sum(a.nbytes for a in inputs.values())
    outputs, classification = _requested_outputs(request, sig)
    return DecodedRequest(
        inputs,
        rows,
        outputs,
        priority=priority,
        timeout_s=timeout_us / 1e6 if timeout_us else None,
        nbytes=nbytes,
        classification=classification,
    )


def _integer_parameter(request: pb.ModelInferRequest, name: str) -> int:
    """A non-negative integer request parameter (int64 or uint64, as clients send); 0 if absent."""
    if name not in request.parameters:
        return 0
    param = request.parameters[name]
    kind = param.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise InvalidInput(
            f"request parameter '{shown(name)}' must be an integer (int64_param or uint64_param), "
            f"got {kind or 'no value'}"
        )
    value = int(getattr(param, kind))
    if value < 0:
        raise InvalidInput(f"request parameter '{shown(name)}' must be >= 0, got {value}")
    return value


def _check_shape(
    tensor: pb.ModelInferRequest.InferInputTensor, spec: TensorSpec, sig: Signature
) -> tuple[int, ...]:
    mbs = sig.max_batch_size
    name = tensor.name
    if tensor.datatype != spec.datatype.name:
        raise InvalidInput(
            f"input '{name}': datatype {shown(tensor.datatype) or '(empty)'} does not match the "
            f"model's {spec.datatype.name}"
        )
    shape = tuple(tensor.shape)
    expected = sig.input_shapes[name]
    if len(shape) != len(expected) or not all(
        d >= 0 and (d == e or e == -1) for d, e in zip(shape, expected, strict=True)
    ):
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} does not match the model's {list(expected)}"
            + (" (the first dimension is the batch)" if mbs > 0 else "")
        )
    if mbs > 0:
        if shape[0] == 0:
            raise InvalidInput(f"input '{name}': batch size 0; send at least one row")
        if shape[0] > mbs and not sig.split_oversized:
            raise InvalidInput(
                f"input '{name}': batch size {shape[0]} exceeds the model's max_batch_size {mbs}"
            )
    return shape


def raw_tensor(data: Buffer, shape: tuple[int, ...], spec: TensorSpec) -> np.ndarray:
    """An array of `shape` over raw tensor bytes (a view), checked for size; requests' raw
    contents and warm-up files go through it."""
    count = math.prod(shape)
    itemsize = spec.datatype.itemsize
    if itemsize is None:
        return _decode_bytes(data, count, spec.name).reshape(shape)
    if len(data) != count * itemsize:
        raise InvalidInput(
            f"input '{spec.name}': raw contents hold {len(data)} bytes, but shape {list(shape)} of "
            f"{spec.datatype.name} needs {count * itemsize}"
        )
    return np.frombuffer(data, dtype=spec.datatype.numpy).reshape(shape)


def _decode_bytes(data: Buffer, count: int, name: str) -> np.ndarray:
    """BYTES elements: each a 4-byte little-endian length, then that many bytes."""
    out = np.empty(count, dtype=object)
    view = memoryview(data)
    pos = 0
    for i in range(count):
        if pos + 4 > len(view):
            raise InvalidInput(
                f"input '{name}': BYTES raw contents end after {i} of {count} elements"
            )
        (length,) = _LENGTH.unpack_from(view, pos)
        pos += 4
        if pos + length > len(view):
            raise InvalidInput(
                f"input '{name}': BYTES element {i} claims {length} bytes, only "
                f"{len(view) - pos} remain"
            )
        out[i] = bytes(view[pos : pos + length])
        pos += length
    if pos != len(view):
        raise InvalidInput(
            f"input '{name}': {len(view) - pos} bytes left over after {count} BYTES elements"
        )
    return out


def _check_utf8(array: np.ndarray, name: str) -> None:
    for i, item in enumerate(array.reshape(-1)):
        try:
            item.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(
                f"input '{name}': element {i} is not valid UTF-8, which this model's backend "
                "needs for strings"
            ) from None


def _from_contents(
    tensor: pb.ModelInferRequest.InferInputTensor, shape: tuple[int, ...], spec: TensorSpec
) -> np.ndarray:
    dt: DataType = spec.datatype
    name = spec.name
    if not dt.contents_field:
        raise InvalidInput(f"input '{name}': {dt.name} data must be sent in raw_input_contents")
    if not tensor.HasField("contents"):
        raise InvalidInput(f"input '{name}' has no data: neither raw_input_contents nor contents")
    values = getattr(tensor.contents, dt.contents_field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': contents.{dt.contents_field} has {len(values)} elements, but shape "
            f"{list(shape)} needs {count}"
        )
    if dt.name == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    wide: np.ndarray = np.asarray(values, dtype=_CONTENTS_DTYPE[dt.contents_field])
    bounds = _INT_RANGE.get(dt.name)
    if bounds is not None and wide.size and (wide.min() < bounds[0] or wide.max() > bounds[1]):
        raise InvalidInput(f"input '{name}': a value lies outside the range of {dt.name}")
    return wide.astype(dt.numpy, copy=False).reshape(shape)


def _rows(inputs: Mapping[str, np.ndarray], sig: Signature) -> int:
    if sig.max_batch_size == 0:
        return 1
    if len(inputs) == 1:
        return int(next(iter(inputs.values())).shape[0])
    rows = {name: int(a.shape[0]) for name, a in inputs.items()}
    if len(set(rows.values())) > 1:
        detail = ", ".join(f"'{n}': {r}" for n, r in rows.items())
        raise InvalidInput(f"inputs disagree on the batch size ({detail})")
    return next(iter(rows.values()))


def _requested_outputs(
    request: pb.ModelInferRequest, sig: Signature
) -> tuple[tuple[str, ...], dict[str, int]]:
    """The outputs asked for, in order, and those asked as top-k classifications."""
    if not request.outputs:
        return sig.output_names, {}
    names: list[str] = []
    classification: dict[str, int] = {}
    for output in request.outputs:
        if output.name not in sig.outputs:
            known = ", ".join(sig.outputs)
            raise InvalidInput(
                f"unknown output '{shown(output.name)}' (the model's outputs: {known})"
            )
        if output.name in names:
            raise InvalidInput(f"output '{shown(output.name)}' is requested more than once")
        if "classification" in output.parameters:
            parameter = output.parameters["classification"]
            kind = parameter.WhichOneof("parameter_choice")
            k = int(getattr(parameter, kind)) if kind in ("int64_param", "uint64_param") else 0
            if k < 1:
                raise InvalidInput(
                    f"output '{shown(output.name)}': classification must be an integer >= 1"
                )
            if sig.outputs[output.name].datatype.name in ("BYTES", "BOOL"):
                raise InvalidInput(
                    f"output '{shown(output.name)}': classification needs a numeric output"
                )
            classification[output.name] = k
        names.append(output.name)
    return tuple(names), classification


def encode(
    outputs: Mapping[str, np.ndarray],
    names: Sequence[str],
    sig: Signature,
    *,
    model_name: str,
    model_version: str,
    request_id: str,
    targets: Mapping[str, memoryview] | None = None,
    classification: Mapping[str, int] | None = None,
) -> pb.ModelInferResponse:
    """The response: requested outputs as raw bytes (one copy each), in the order asked. An
    output with a target (a shared memory slice) is written there instead, and its
    raw_output_contents entry left empty, so that entries stay aligned with outputs."""
    response = pb.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request_id
    )
    for name in names:
        array = outputs[name]
        dt = sig.outputs[name].datatype
        dims = sig.reshape_outputs.get(name)
        if dims is not None:
            batch = array.shape[:1] if sig.max_batch_size > 0 else ()
            array = array.reshape(batch + sig.outputs[name].dims)
        k = None if classification is None else classification.get(name)
        if k is not None:
            array = classify(array, k, sig.labels.get(name, ()), sig.max_batch_size > 0)
            dt = BYTES
        tensor = response.outputs.add()
        tensor.name = name
        tensor.datatype = dt.name
        tensor.shape.extend(array.shape)
        target = None if targets is None else targets.get(name)
        if target is None:
            response.raw_output_contents.append(to_raw(array, dt))
        else:
            tensor.parameters["shared_memory_byte_size"].uint64_param = _write(array, dt, target)
            response.raw_output_contents.append(b"")
    return response


def _write(array: np.ndarray, dt: DataType, target: memoryview) -> int:
    """Write `array` into `target` as the protocol carries `dt` (one copy); the bytes written."""
    if dt.name == "BYTES":
        data = to_raw(array, dt)
        need = len(data)
    else:
        need = array.size * dt.numpy.itemsize
    if need > len(target):
        raise InvalidInput(
            f"output needs {need} bytes, but its shared memory slice holds {len(target)}"
        )
    if dt.name == "BYTES":
        target[:need] = data
    else:
        place = np.frombuffer(target, dtype=dt.numpy, count=array.size).reshape(array.shape)
        np.copyto(place, array, casting="unsafe")
    return need


def to_raw(array: np.ndarray, dt: DataType) -> bytes:
    """Row-major bytes of `array` as the protocol carries `dt`."""
    if dt.name == "BYTES":
        parts = []
        for item in array.reshape(-1):
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=dt.numpy).tobytes()


BYTES = DATATYPES["BYTES"]


def classify(array: np.ndarray, k: int, labels: Sequence[str], batched: bool) -> np.ndarray:
    """Triton's classification extension: per row (or for the whole tensor when unbatched) the
    k highest values, highest first, as "value:index[:label]" strings; k is capped at the
    values a row holds."""
    rows = array.reshape(array.shape[0] if batched else 1, -1)
    k = min(k, rows.shape[1])
    top = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    out = np.empty(top.shape, dtype=object)
    for r, indices in enumerate(top):
        for c, index in enumerate(indices):
            text = f"{float(rows[r, index]):f}:{int(index)}"
            if int(index) < len(labels):
                text += f":{labels[int(index)]}"
            out[r, c] = text.encode()
    return out if batched else out.reshape(k)
