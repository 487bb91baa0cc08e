"""Tensor datatypes: the protocol's names, the model config's enum names, numpy storage.

One table serves the codec (wire bytes to arrays), the model repository (config.pbtxt types) and
the backends (numpy dtypes). BF16 has no numpy dtype, so it is stored as uint16 bit patterns;
BYTES is stored as an object array of `bytes`, one element per string.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DataType:
    """One tensor element type as the protocol, the config and numpy name it."""

    name: str  # protocol datatype string, e.g. "FP32"
    config_name: str  # model config enum name, e.g. "TYPE_FP32"
    numpy: np.dtype  # storage dtype (uint16 for BF16, object for BYTES)
    contents_field: str  # InferTensorContents field that carries it typed ("" for FP16/BF16)

    @property
    def itemsize(self) -> int | None:
        """Bytes per element, or None for BYTES (variable length)."""
        return None if self.name == "BYTES" else int(self.numpy.itemsize)


def _dt(name: str, config: str, dtype: str | type, field: str) -> DataType:
    return DataType(name, config, np.dtype(dtype), field)


DATATYPES: dict[str, DataType] = {
    d.name: d
    for d in (
        _dt("BOOL", "TYPE_BOOL", np.bool_, "bool_contents"),
        _dt("UINT8", "TYPE_UINT8", "<u1", "uint_contents"),
        _dt("UINT16", "TYPE_UINT16", "<u2", "uint_contents"),
        _dt("UINT32", "TYPE_UINT32", "<u4", "uint_contents"),
        _dt("UINT64", "TYPE_UINT64", "<u8", "uint64_contents"),
        _dt("INT8", "TYPE_INT8", "<i1", "int_contents"),
        _dt("INT16", "TYPE_INT16", "<i2", "int_contents"),
        _dt("INT32", "TYPE_INT32", "<i4", "int_contents"),
        _dt("INT64", "TYPE_INT64", "<i8", "int64_contents"),
        _dt("FP16", "TYPE_FP16", "<f2", ""),
        _dt("FP32", "TYPE_FP32", "<f4", "fp32_contents"),
        _dt("FP64", "TYPE_FP64", "<f8", "fp64_contents"),
        _dt("BYTES", "TYPE_STRING", object, "bytes_contents"),
        _dt("BF16", "TYPE_BF16", "<u2", ""),
    )
}

ONNX_TYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
    "tensor(bfloat16)": "BF16",
}
"""The tensor types ONNX Runtime reports (`NodeArg.type`), as protocol datatype names."""

_BY_CONFIG = {d.config_name: d for d in DATATYPES.values()}
def from_config_type(config_name: str) -> DataType:
    """The datatype for a model config enum name such as TYPE_FP32; KeyError otherwise."""
    return _BY_CONFIG[config_name]
