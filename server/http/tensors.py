"""An HTTP infer body to a request, and an answer to a body: JSON tensors and Triton's binary
tensor data extension.

A body is a JSON header, optionally followed by binary tensor data: the
`Inference-Header-Content-Length` header says where the JSON ends. An input either carries
`data` (JSON, nested or flat, row-major) or `parameters.binary_data_size` bytes of the binary
part, inputs taking their bytes in order. Binary inputs stay views into the body: the one copy
is the batch's gather. Outputs come back as JSON `data` unless binary data is asked for, per
output (`parameters.binary_data`) or for all (`parameters.binary_data_output`).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ferry.common.datatypes import DATATYPES, DataType
from ferry.common.errors import InvalidInput, shown
from ferry.proto import grpc_service_pb2 as pb
from ferry.server.codec import Buffer

HEADER_LENGTH = "Inference-Header-Content-Length"
_LENGTH = struct.Struct("<I")


@dataclass
class HttpInfer:
    """A parsed infer body: the request, each input's data, and how to write each output."""

    request: pb.ModelInferRequest
    raw: list[Buffer | None]  # None: the input is read from a shared memory region
    binary: dict[str, bool] = field(default_factory=dict)  # per named output
    binary_default: bool = False  # outputs not named in the request

    def wants_binary(self, name: str) -> bool:
        return self.binary.get(name, self.binary_default)


def parse_infer(body: bytes, header_length: str | None, model: str, version: str) -> HttpInfer:
    """The request in `body`; InvalidInput saying what is wrong with it."""
    view = memoryview(body)
    if header_length is None:
        header, binary = view, view[len(view) :]
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise InvalidInput(
                f"{HEADER_LENGTH} must be an integer, got '{shown(header_length)}'"
            ) from None
        if not 0 <= length <= len(view):
            raise InvalidInput(
                f"{HEADER_LENGTH} is {length}, but the body holds {len(view)} bytes"
            )
        header, binary = view[:length], view[length:]
    try:
        document = json.loads(bytes(header))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput("the request body must be a JSON object")

    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    request.id = request_id
    binary_default = False
    for key, value in _object(document.get("parameters", {}), "parameters").items():
        if key == "binary_data_output":
            binary_default = _flag(value, "parameters.binary_data_output")
        else:
            _set_parameter(request.parameters[key], value, f"parameters.{key}")

    raw: list[Buffer | None] = []
    offset = 0
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("'inputs' must be a non-empty list")
    for item in inputs:
        tensor, name, parameters = _named(item, "input")
        datatype = tensor.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidInput(f"input '{shown(name)}' needs a 'datatype' (a string)")
        shape = _shape(tensor.get("shape"), name)
        entry = request.inputs.add(name=name, datatype=datatype, shape=shape)
        size = parameters.pop("binary_data_size", None)
        for key, value in parameters.items():
            _set_parameter(entry.parameters[key], value, f"input '{shown(name)}' {key}")
        if "shared_memory_region" in parameters:
            if "data" in tensor or size is not None:
                raise InvalidInput(
                    f"input '{shown(name)}' names a shared memory region and also carries data"
                )
            raw.append(None)
        elif size is not None:
            if "data" in tensor:
                raise InvalidInput(f"input '{shown(name)}' has both 'data' and binary data")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(
                    f"input '{shown(name)}': binary_data_size must be an integer >= 0"
                )
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input '{shown(name)}': binary_data_size {size} runs past the body's "
                    f"binary data ({len(binary) - offset} bytes left)"
                )
            raw.append(binary[offset : offset + size])
            offset += size
        elif "data" in tensor:
            raw.append(_from_json(tensor["data"], datatype, shape, name))
        else:
            raise InvalidInput(f"input '{shown(name)}' has no data: neither 'data' nor binary")
    if offset != len(binary):
        raise InvalidInput(
            f"{len(binary) - offset} bytes of binary data are left over after the inputs"
        )

    binary_outputs: dict[str, bool] = {}
    outputs = document.get("outputs", [])
    if not isinstance(outputs, list):
        raise InvalidInput("'outputs' must be a list")
    for item in outputs:
        _, name, parameters = _named(item, "output")
        entry = request.outputs.add(name=name)
        binary_outputs[name] = _flag(parameters.pop("binary_data", binary_default),
                                     f"output '{shown(name)}' binary_data")  # fmt: skip
        for key, value in parameters.items():
            _set_parameter(entry.parameters[key], value, f"output '{shown(name)}' {key}")
    return HttpInfer(request, raw, binary_outputs, binary_default)


def render_infer(response: pb.ModelInferResponse, parsed: HttpInfer) -> tuple[bytes, int | None]:
    """The answer's body, and where its JSON header ends when binary data follows (else None)."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for tensor, data in zip(response.outputs, response.raw_output_contents, strict=True):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if "shared_memory_byte_size" in tensor.parameters:
            pass  # written into its region: described, no data (and no parameters, which
            # clients read as announcing binary data)
        elif parsed.wants_binary(tensor.name):
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = _to_json(data, DATATYPES[tensor.datatype])
        outputs.append(entry)
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id:
        document["id"] = response.id
    document["parameters"] = _parameters(response.parameters)
    document["outputs"] = outputs
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


# ---- the pieces --------------------------------------------------------------------------------


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return value


def _named(item: Any, kind: str) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """An input or output entry: the object, its name and its parameters (checked)."""
    entry = _object(item, f"each {kind}")
    name = entry.get("name")
    if not isinstance(name, str):
        raise InvalidInput(f"every {kind} needs a 'name' (a string)")
    parameters = _object(entry.get("parameters", {}), f"{kind} '{shown(name)}' parameters")
    return entry, name, parameters


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{what} must be true or false")
    return value


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise InvalidInput(f"input '{shown(name)}': 'shape' must be a list of integers >= 0")
    return value


def _set_parameter(parameter: pb.InferParameter, value: Any, what: str) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        if value < 0:
            parameter.int64_param = value
        else:
            parameter.uint64_param = value  # clients send priorities and timeouts unsigned
    elif isinstance(value, str):
        parameter.string_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        raise InvalidInput(f"{what}: a parameter is a boolean, number or string")


def _parameters(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    form: dict[str, Any] = {}
    for key, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        if kind is not None:
            form[key] = getattr(parameter, kind)
    return form


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _from_json(data: Any, datatype: str, shape: list[int], name: str) -> bytes:
    """JSON `data` as the row-major bytes binary data would carry; checked for count, kind and
    range, since numpy would otherwise wrap or truncate silently."""
    dt = DATATYPES.get(datatype)
    if dt is None:
        raise InvalidInput(f"input '{shown(name)}': unknown datatype '{shown(datatype)}'")
    count = math.prod(shape)
    flat = _flatten(data)
    if len(flat) != count:
        raise InvalidInput(
            f"input '{shown(name)}': 'data' holds {len(flat)} elements, but shape {shape} "
            f"needs {count}"
        )
    if dt.name == "BYTES":
        if not all(isinstance(item, str) for item in flat):
            raise InvalidInput(f"input '{shown(name)}': BYTES data must be strings")
        parts = []
        for item in flat:
            encoded = item.encode()
            parts.append(_LENGTH.pack(len(encoded)))
            parts.append(encoded)
        return b"".join(parts)
    if dt.name == "BF16":
        raise InvalidInput(f"input '{shown(name)}': BF16 data must be sent as binary data")
    if dt.name == "BOOL":
        if not all(isinstance(item, bool) for item in flat):
            raise InvalidInput(f"input '{shown(name)}': BOOL data must be true or false")
        return np.array(flat, dtype=np.bool_).tobytes()
    if any(isinstance(item, bool) or not isinstance(item, int | float) for item in flat):
        raise InvalidInput(f"input '{shown(name)}': {dt.name} data must be numbers")
    if dt.numpy.kind in "iu":
        if not all(isinstance(item, int) for item in flat):
            raise InvalidInput(f"input '{shown(name)}': {dt.name} data must be integers")
        info = np.iinfo(dt.numpy)
        if flat and (min(flat) < info.min or max(flat) > info.max):
            raise InvalidInput(
                f"input '{shown(name)}': a value lies outside the range of {dt.name}"
            )
        return np.array(flat, dtype=dt.numpy).tobytes()
    return np.array(flat, dtype=np.float64).astype(dt.numpy).tobytes()


def _to_json(data: bytes, dt: DataType) -> list[Any]:
    if dt.name == "BYTES":
        items: list[Any] = []
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            (length,) = _LENGTH.unpack_from(view, pos)
            items.append(bytes(view[pos + 4 : pos + 4 + length]).decode(errors="replace"))
            pos += 4 + length
        return items
    if dt.name == "BF16":
        wide = np.frombuffer(data, dtype=np.uint16).astype(np.uint32) << 16
        floats: list[Any] = wide.view(np.float32).tolist()
        return floats
    values: list[Any] = np.frombuffer(data, dtype=dt.numpy).tolist()
    return values
