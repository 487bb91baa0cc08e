"""config.pbtxt parsing and completion: what loads, and the exact error for what does not."""

from __future__ import annotations

import pytest

from ferry.common.datatypes import DATATYPES
from ferry.common.errors import ModelLoadError
from ferry.engines.base import TensorSpec
from ferry.engines.loading import Artifact
from ferry.engines.onnxruntime_loader import OnnxRuntimeLoader
from ferry.server.model_config import complete, parse

FP32 = DATATYPES["FP32"]
X = TensorSpec("x", FP32, (-1, 4))
Y = TensorSpec("y", FP32, (-1, 4))


def settle(text: str, *, had_file: bool = True):  # type: ignore[no-untyped-def]
    return complete(
        parse(text, "m/config.pbtxt"),
        "m",
        Artifact([X], [Y]),
        OnnxRuntimeLoader(),
        had_file=had_file,
        default_max_batch_size=4,
        where="m/config.pbtxt",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus: 1", "m/config.pbtxt:1:1: field 'bogus' is unknown"),
        (
            'max_batch_size: 8\noutput [ {\n  name: "y"\ndynamic_batching { }',
            "m/config.pbtxt:4:1: field 'dynamic_batching' is not a field of ModelOutput: "
            "is a '}' or ']' missing before it?",
        ),
        (
            'max_batch_size: 8\noutput [ {\n  name: "y"\n',
            'm/config.pbtxt:3:9: cannot parse: Expected "}"',
        ),
        ("sequence_batching { }", "field 'sequence_batching' is a Triton field Ferry does not"),
        ("max_batch_size: 'x'", "cannot parse"),
        (
            'input { name: "x" data_type: TYPE_FP32 dims: [4] is_shape_tensor: true }',
            "field 'input[0].is_shape_tensor' is not supported",
        ),
        ("instance_group { passive: true }", "field 'instance_group[0].passive' is not supported"),
    ],
)
def test_parse_refuses_with_the_field_named(text: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=None) as info:
        parse(text, "m/config.pbtxt")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name: "other"', "name 'other' differs from the folder name 'm'"),
        (
            'max_batch_size: 8 input [ { name: "x" data_type: TYPE_FP32 dims: [4] },'
            ' { name: "x" data_type: TYPE_FP32 dims: [4] } ]',
            "input ['x'] declared more than once",
        ),
        (
            'max_batch_size: 8 output [ { name: "y" data_type: TYPE_FP32 dims: [4] },'
            ' { name: "y" data_type: TYPE_FP32 dims: [4] } ]',
            "output ['y'] declared more than once",
        ),
        (
            'max_batch_size: 8 input { name: "x" data_type: TYPE_INT64 dims: [4] }',
            "input 'x': data_type TYPE_INT64 differs from the model's TYPE_FP32",
        ),
        (
            'max_batch_size: 8 input { name: "x" data_type: TYPE_FP32 dims: [5] }',
            "input 'x': dims [5] (plus the batch dimension) do not fit the model's shape [-1, 4]",
        ),
        (
            'max_batch_size: 8 input { name: "z" data_type: TYPE_FP32 dims: [4] }',
            "input 'z' is not in the model",
        ),
        (
            "max_batch_size: 8 dynamic_batching { preferred_batch_size: [16] }",
            "preferred_batch_size 16 must be in 1..max_batch_size (8)",
        ),
        ("instance_group { kind: KIND_GPU }", "instance_group kind KIND_GPU, but no usable GPU"),
        (
            'max_batch_size: 0 input { name: "x" data_type: TYPE_FP32 dims: [4] }',
            "dims [4] do not fit the model's shape [-1, 4]",
        ),
        (
            'max_batch_size: 8 input { name: "x" data_type: TYPE_FP32 dims: [2, 3] '
            "reshape { shape: [4] } }",
            "reshape [4] must hold the same fixed number of elements as dims [2, 3]",
        ),
        (
            'max_batch_size: 8 input { name: "x" data_type: TYPE_FP32 dims: [-1] '
            "reshape { shape: [4] } }",
            "(Ferry reshapes fixed dims only)",
        ),
        (
            'max_batch_size: 8 input { name: "x" data_type: TYPE_FP32 dims: [2, 2] '
            "reshape { shape: [1, 4] } }",
            "input 'x': reshape [1, 4] (plus the batch dimension) do not fit the model's shape",
        ),
        (
            'max_batch_size: 8 output { name: "y" data_type: TYPE_FP32 dims: [4] '
            'label_filename: "../labels.txt" }',
            "label_filename '../labels.txt' must name a file in the model's folder",
        ),
    ],
)
def test_complete_refuses_disagreements(text: str, message: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        settle(text)
    assert message in str(info.value)


def test_inputs_and_outputs_are_filled_from_the_model() -> None:
    settings = settle("max_batch_size: 8 dynamic_batching { max_queue_delay_microseconds: 100 }")
    assert [i.name for i in settings.config.input] == ["x"]
    assert list(settings.config.input[0].dims) == [4]
    assert settings.signature.max_batch_size == 8
    assert settings.batching.batched
    assert settings.batching.max_queue_delay_s == pytest.approx(100e-6)
    assert settings.config.platform == "onnxruntime_onnx"


def test_no_config_file_makes_a_batchable_model_batch() -> None:
    settings = settle("", had_file=False)
    assert settings.batching.max_batch_size == 4 and settings.batching.dynamic


def test_instance_groups_add_up() -> None:
    settings = settle("instance_group [ { count: 2 kind: KIND_CPU }, { count: 3 } ]")
    assert settings.instance_count == 5


def test_a_reshaped_tensor_shows_its_config_dims_and_feeds_the_model_its_own() -> None:
    settings = settle(
        'max_batch_size: 8 input { name: "x" data_type: TYPE_FP32 dims: [2, 2] '
        "reshape { shape: [4] } }"
    )
    assert settings.signature.inputs["x"].dims == (2, 2)  # what requests are checked against
    assert settings.signature.reshape_inputs == {"x": (4,)}  # what the model gets
