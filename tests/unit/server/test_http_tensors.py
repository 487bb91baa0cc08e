"""The HTTP tensor codec: whatever a client sends, as JSON or as binary data, decodes to the same
arrays it meant, each input its own bytes; and an answer reads back as the outputs it holds."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ferry.common.datatypes import DATATYPES
from ferry.common.errors import InvalidInput
from ferry.engines.base import TensorSpec
from ferry.proto import grpc_service_pb2 as pb
from ferry.server.codec import Signature, decode
from ferry.server.http.tensors import HEADER_LENGTH, parse_infer, render_infer

NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
           "FP16", "FP32", "FP64"]  # fmt: skip


@st.composite
def tensors(draw: st.DrawFn) -> list[tuple[str, np.ndarray, bool]]:
    """Up to four inputs of one batch size: (datatype, array, sent as binary)."""
    rows = draw(st.integers(1, 4))
    chosen = []
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from(NUMERIC))
        dtype = DATATYPES[name].numpy
        elements = (
            hnp.from_dtype(dtype, allow_nan=False, allow_infinity=False, allow_subnormal=False)
            if dtype.kind == "f"
            else hnp.from_dtype(dtype)
        )
        array = draw(hnp.arrays(dtype, (rows, draw(st.integers(1, 5))), elements=elements))
        chosen.append((name, array, draw(st.booleans())))
    return chosen


def body_for(chosen: list[tuple[str, np.ndarray, bool]]) -> tuple[bytes, str | None]:
    inputs, binary = [], b""
    for index, (name, array, as_binary) in enumerate(chosen):
        entry: dict[str, object] = {"name": f"in{index}", "datatype": name,
                                    "shape": list(array.shape)}  # fmt: skip
        if as_binary:
            data = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            binary += data
        else:
            entry["data"] = array.tolist()
        inputs.append(entry)
    header = json.dumps({"inputs": inputs}).encode()
    return header + binary, (str(len(header)) if binary else None)


@settings(max_examples=150, deadline=None)
@given(tensors())
def test_json_and_binary_inputs_decode_to_the_arrays_sent(
    chosen: list[tuple[str, np.ndarray, bool]],
) -> None:
    body, header_length = body_for(chosen)
    parsed = parse_infer(body, header_length, "m", "")
    specs = {
        f"in{i}": TensorSpec(f"in{i}", DATATYPES[name], (array.shape[1],))
        for i, (name, array, _) in enumerate(chosen)
    }
    sig = Signature(specs, {}, max_batch_size=8)
    decoded = decode(parsed.request, sig, parsed.raw)
    for index, (_, array, _) in enumerate(chosen):
        np.testing.assert_array_equal(decoded.inputs[f"in{index}"], array)
    assert decoded.rows == chosen[0][1].shape[0]


@settings(max_examples=100, deadline=None)
@given(tensors(), st.booleans())
def test_an_answer_reads_back_as_its_outputs(
    chosen: list[tuple[str, np.ndarray, bool]], binary_default: bool
) -> None:
    response = pb.ModelInferResponse(model_name="m", model_version="1", id="r")
    for index, (name, array, _) in enumerate(chosen):
        response.outputs.add(name=f"out{index}", datatype=name, shape=list(array.shape))
        response.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    wanted = {f"out{i}": as_binary for i, (_, _, as_binary) in enumerate(chosen)}
    outputs = [{"name": n, "parameters": {"binary_data": b}} for n, b in wanted.items()]
    one = {"name": "x", "datatype": "FP32", "shape": [1], "data": [0.0]}
    parameters = {"binary_data_output": binary_default}
    request = json.dumps({"inputs": [one], "outputs": outputs, "parameters": parameters}).encode()
    parsed = parse_infer(request, None, "m", "")
    body, header_length = render_infer(response, parsed)
    header = json.loads(body[:header_length] if header_length is not None else body)
    offset = header_length or 0
    for index, ((name, array, as_binary), entry) in enumerate(
        zip(chosen, header["outputs"], strict=True)
    ):
        assert entry["name"] == f"out{index}" and entry["shape"] == list(array.shape)
        dtype = DATATYPES[name].numpy
        if as_binary:
            size = entry["parameters"]["binary_data_size"]
            got = np.frombuffer(body[offset : offset + size], dtype=dtype).reshape(array.shape)
            offset += size
        else:
            got = np.array(entry["data"], dtype=dtype).reshape(array.shape)
        np.testing.assert_array_equal(got, array)
    assert offset == (len(body) if header_length is not None else 0)


def test_bytes_travel_length_prefixed_in_binary_and_as_strings_in_json() -> None:
    words = ["", "ferry", "f\u00e4hre"]
    request = json.dumps({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1, 3],
                                      "data": [words]}]}).encode()  # fmt: skip
    parsed = parse_infer(request, None, "m", "")
    expected = b"".join(struct.pack("<I", len(w.encode())) + w.encode() for w in words)
    assert bytes(parsed.raw[0]) == expected
    response = pb.ModelInferResponse(model_name="m", model_version="1")
    response.outputs.add(name="s", datatype="BYTES", shape=[1, 3])
    response.raw_output_contents.append(expected)
    body, header_length = render_infer(response, parsed)
    assert header_length is None and json.loads(body)["outputs"][0]["data"] == words


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("INT8", [128], "outside the range of INT8"),
        ("UINT8", [-1], "outside the range of UINT8"),
        ("INT32", [1.5], "INT32 data must be integers"),
        ("FP32", [True], "FP32 data must be numbers"),
        ("BOOL", [1], "BOOL data must be true or false"),
        ("BYTES", [1], "BYTES data must be strings"),
        ("BF16", [1.0], "BF16 data must be sent as binary data"),
        ("FP99", [1.0], "unknown datatype 'FP99'"),
    ],
)
def test_json_data_that_would_wrap_or_truncate_is_refused(
    datatype: str, data: list[object], message: str
) -> None:
    request = json.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": [1],
                                      "data": data}]}).encode()  # fmt: skip
    with pytest.raises(InvalidInput, match=message):
        parse_infer(request, None, "m", "")


def test_binary_inputs_are_views_into_the_body_not_copies() -> None:
    data = np.arange(4, dtype=np.float32).tobytes()
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 4],
              "parameters": {"binary_data_size": 16}}  # fmt: skip
    header = json.dumps({"inputs": [tensor]}).encode()
    body = header + data
    parsed = parse_infer(body, str(len(header)), "m", "")
    view = parsed.raw[0]
    assert isinstance(view, memoryview) and view.obj is body
    assert HEADER_LENGTH == "Inference-Header-Content-Length"
