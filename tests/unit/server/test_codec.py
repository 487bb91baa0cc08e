"""The codec alone: arrays in and out for every datatype, without a server."""

from __future__ import annotations

import numpy as np
import pytest

from ferry.common.datatypes import DATATYPES
from ferry.common.errors import InvalidInput
from ferry.engines.base import TensorSpec
from ferry.proto import grpc_service_pb2 as pb
from ferry.server.codec import Signature, decode, encode, to_raw


def signature(name: str, dims: tuple[int, ...] = (-1,), mbs: int = 8) -> Signature:
    dt = DATATYPES[name]
    return Signature({"x": TensorSpec("x", dt, dims)}, {"y": TensorSpec("y", dt, dims)}, mbs)


SAMPLES = {
    "BOOL": np.array([[True, False]]),
    "UINT8": np.array([[1, 255]], np.uint8),
    "UINT16": np.array([[1, 65535]], np.uint16),
    "UINT32": np.array([[1, 2**32 - 1]], np.uint32),
    "UINT64": np.array([[1, 2**64 - 1]], np.uint64),
    "INT8": np.array([[-128, 127]], np.int8),
    "INT16": np.array([[-1, 2**15 - 1]], np.int16),
    "INT32": np.array([[-1, 2**31 - 1]], np.int32),
    "INT64": np.array([[-1, 2**63 - 1]], np.int64),
    "FP16": np.array([[0.5, -1.5]], np.float16),
    "FP32": np.array([[0.5, -1.5]], np.float32),
    "FP64": np.array([[0.5, -1.5]], np.float64),
    "BF16": np.array([[0x3F80, 0xBFC0]], np.uint16),
    "BYTES": np.array([[b"a", b""]], dtype=object),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_raw_round_trip(name: str) -> None:
    sig = signature(name)
    array = SAMPLES[name]
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype=name, shape=array.shape)
    request.raw_input_contents.append(to_raw(array, DATATYPES[name]))
    decoded = decode(request, sig)
    np.testing.assert_array_equal(decoded.inputs["x"], array)
    assert decoded.rows == 1 and decoded.outputs == ("y",)
    response = encode(
        {"y": decoded.inputs["x"]}, ("y",), sig, model_name="m", model_version="1", request_id="r"
    )
    assert response.outputs[0].datatype == name
    assert response.raw_output_contents[0] == to_raw(array, DATATYPES[name])


@pytest.mark.parametrize("name", [n for n in sorted(SAMPLES) if DATATYPES[n].contents_field])
def test_typed_contents(name: str) -> None:
    array = SAMPLES[name]
    request = pb.ModelInferRequest()
    tensor = request.inputs.add(name="x", datatype=name, shape=array.shape)
    getattr(tensor.contents, DATATYPES[name].contents_field).extend(array.reshape(-1).tolist())
    np.testing.assert_array_equal(decode(request, signature(name)).inputs["x"], array)


def test_raw_input_is_a_view_not_a_copy() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(np.ones(2, np.float32).tobytes())
    array = decode(request, signature("FP32")).inputs["x"]
    assert not array.flags.owndata


def test_typed_int8_out_of_range_is_refused() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype="INT8", shape=[1, 1]).contents.int_contents.append(300)
    with pytest.raises(InvalidInput, match="outside the range of INT8"):
        decode(request, signature("INT8"))


def test_fp16_typed_contents_are_refused() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype="FP16", shape=[1, 1]).contents.fp32_contents.append(1)
    with pytest.raises(InvalidInput, match="FP16 data must be sent in raw_input_contents"):
        decode(request, signature("FP16"))


def test_unbatched_model_counts_one_row() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    request.raw_input_contents.append(np.zeros(6, np.float32).tobytes())
    decoded = decode(request, signature("FP32", dims=(2, 3), mbs=0))
    assert decoded.rows == 1 and decoded.inputs["x"].shape == (2, 3)
