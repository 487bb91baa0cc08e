"""Small ONNX models the tests serve next to the examples, built here (never downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ferry.server.example_repo import write_example_repo

# Protocol datatype -> ONNX element type, for the every-datatype identity model.
ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
    "BF16": TensorProto.BFLOAT16,
}
CONFIG_TYPES = {
    "BYTES": "TYPE_STRING",
}


def _save(model: onnx.ModelProto, path: Path) -> None:
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString(deterministic=True))


def _opset() -> list[onnx.OperatorSetIdProto]:
    return [helper.make_opsetid("", 17)]


def identity_all_types(names: tuple[str, ...]) -> onnx.ModelProto:
    """Inputs in_<TYPE> [batch, 3] copied to out_<TYPE>, for each datatype named."""
    nodes, inputs, outputs = [], [], []
    for name in names:
        onnx_type = ONNX_TYPES[name]
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
        inputs.append(helper.make_tensor_value_info(f"in_{name}", onnx_type, ["b", 3]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", onnx_type, ["b", 3]))
    graph = helper.make_graph(nodes, "types", inputs, outputs)
    return helper.make_model(graph, opset_imports=_opset())


def add_constant(value: float, batched: bool = True) -> onnx.ModelProto:
    """y = x + value; x FP32 [batch, 4] (or [2, 3] fixed when not batched)."""
    shape: list[int | str] = ["b", 4] if batched else [2, 3]
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(np.array(value, dtype=np.float32), "c")],
    )
    return helper.make_model(graph, opset_imports=_opset())


def identity_variable() -> onnx.ModelProto:
    """y = x; x FP32 [batch, n] with n free."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "n"])],
    )
    return helper.make_model(graph, opset_imports=_opset())


# Scheduler test models: a long max_queue_delay keeps requests waiting in the queue for a known
# time, so queue policies, priorities, deadlines and byte bounds act deterministically.
SCHEDULING = {
    "nosplit": (
        "add",
        "max_batch_size: 8\ndynamic_batching { }\n"
        'parameters { key: "ferry.split_oversized" value { string_value: "false" } }\n',
    ),
    "timeouts": (
        "add",
        "max_batch_size: 8\n"
        "dynamic_batching {\n"
        "  max_queue_delay_microseconds: 400000\n"
        "  default_queue_policy { default_timeout_microseconds: 100000"
        " allow_timeout_override: true }\n"
        "}\n",
    ),
    "delayed": (
        "add",
        "max_batch_size: 8\n"
        "dynamic_batching {\n"
        "  max_queue_delay_microseconds: 300000\n"
        "  default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 50000 }\n"
        "}\n",
    ),
    "ranked": (
        "identity",
        "max_batch_size: 4\n"
        "dynamic_batching {\n"
        "  max_queue_delay_microseconds: 300000\n"
        "  priority_levels: 2\n"
        "  default_priority_level: 2\n"
        "}\n",
    ),
    "reserved": (
        "identity",
        "max_batch_size: 4\n"
        "dynamic_batching { priority_levels: 2 default_priority_level: 2 }\n"
        "instance_group { count: 2 kind: KIND_CPU }\n"
        'parameters { key: "ferry.reserved_instances" value { string_value: "1" } }\n',
    ),
    # Fails to load: its one instance cannot be reserved (the other models still serve).
    "overreserved": (
        "identity",
        "max_batch_size: 4\n"
        "dynamic_batching { priority_levels: 2 }\n"
        'parameters { key: "ferry.reserved_instances" value { string_value: "1" } }\n',
    ),
    "tinybytes": (
        "identity",
        "max_batch_size: 64\n"
        "dynamic_batching { max_queue_delay_microseconds: 300000 }\n"
        'parameters { key: "ferry.max_queue_bytes" value { string_value: "100" } }\n',
    ),
    # Observability tests only: a full batch (8 rows) leaves at once; a lone row waits for a
    # 200 ms batch and its 50 ms queue timeout rejects it first.
    "metered": (
        "add",
        "max_batch_size: 8\n"
        "dynamic_batching {\n"
        "  max_queue_delay_microseconds: 200000\n"
        "  default_queue_policy { default_timeout_microseconds: 50000 }\n"
        "}\n",
    ),
    "ordered": (
        "identity",
        "max_batch_size: 4\n"
        "dynamic_batching { preserve_ordering: true }\n"
        "instance_group { count: 2 kind: KIND_CPU }\n",
    ),
}


def lookup(rows: int = 100, width: int = 4) -> onnx.ModelProto:
    """y = table[ids]; ids INT64 [batch, 1]. An id outside 0..rows-1 makes ONNX Runtime fail the
    whole batch with a message that names the id: a poisoned request."""
    table = np.arange(rows * width, dtype=np.float32).reshape(rows, width)
    graph = helper.make_graph(
        [
            helper.make_node("Squeeze", ["ids", "axis"], ["flat"]),
            helper.make_node("Gather", ["table", "flat"], ["y"], axis=0),
        ],
        "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", width])],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis"),
        ],
    )
    return helper.make_model(graph, opset_imports=_opset())


def build_test_repo(root: Path) -> Path:
    """The example models plus the test-only ones below."""
    write_example_repo(root)
    # ONNX Runtime's Python API cannot mix BF16 and strings in one model: BF16 gets its own.
    all_but_bf16 = tuple(n for n in ONNX_TYPES if n != "BF16")
    for model, names in (("types", all_but_bf16), ("bf16", ("BF16",))):
        _save(identity_all_types(names), root / model / "1" / "model.onnx")
        lines = [f'name: "{model}"', 'platform: "onnxruntime_onnx"', "max_batch_size: 8"]
        for name in names:
            config_type = CONFIG_TYPES.get(name, f"TYPE_{name}")
            lines.append(f'input {{ name: "in_{name}" data_type: {config_type} dims: [ 3 ] }}')
            lines.append(f'output {{ name: "out_{name}" data_type: {config_type} dims: [ 3 ] }}')
        lines.append("dynamic_batching { }")
        (root / model / "config.pbtxt").write_text("\n".join(lines) + "\n")

    _save(add_constant(0.0, batched=False), root / "nobatch" / "1" / "model.onnx")
    (root / "nobatch" / "config.pbtxt").write_text(
        'name: "nobatch"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        'input { name: "x" data_type: TYPE_FP32 dims: [ 2, 3 ] }\n'
        'output { name: "y" data_type: TYPE_FP32 dims: [ 2, 3 ] }\n'
    )

    for version in (1, 2, 3):
        _save(add_constant(float(version)), root / "versioned" / str(version) / "model.onnx")
    (root / "versioned" / "config.pbtxt").write_text(
        'name: "versioned"\nmax_batch_size: 8\nversion_policy { specific { versions: [1, 2] } }\n'
        "dynamic_batching { }\n"
    )

    # No config.pbtxt at all: derived from the ONNX graph.
    _save(add_constant(10.0), root / "noconfig" / "1" / "model.onnx")

    # Fails to load (unknown field); must not stop the others.
    _save(add_constant(0.0), root / "broken" / "1" / "model.onnx")
    (root / "broken" / "config.pbtxt").write_text('name: "broken"\nmax_batch_size: 8\nbogus: 1\n')

    # A lookup that fails on an out-of-range id, batching for long enough that good and poisoned
    # requests share batches.
    _save(lookup(), root / "lookup" / "1" / "model.onnx")
    (root / "lookup" / "config.pbtxt").write_text(
        'name: "lookup"\nmax_batch_size: 64\n'
        "dynamic_batching { max_queue_delay_microseconds: 20000 }\n"
    )

    # Tiny queue, one instance, for back-pressure tests.
    _save(add_constant(0.0), root / "tinyqueue" / "1" / "model.onnx")
    (root / "tinyqueue" / "config.pbtxt").write_text(
        'name: "tinyqueue"\nmax_batch_size: 8\n'
        "dynamic_batching { default_queue_policy { max_queue_size: 1 } }\n"
    )
    for name, (kind, config) in SCHEDULING.items():
        graph = add_constant(0.0) if kind == "add" else identity_variable()
        _save(graph, root / name / "1" / "model.onnx")
        (root / name / "config.pbtxt").write_text(f'name: "{name}"\n' + config)

    # The history example with a long delay and one padded profile: concurrent requests of
    # different lengths are sure to share one padded batch.
    padded = root / "history_padded"
    (padded / "1").mkdir(parents=True)
    (padded / "1" / "model.onnx").write_bytes((root / "history" / "1" / "model.onnx").read_bytes())
    (padded / "config.pbtxt").write_text(
        'name: "history_padded"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 256\n'
        'input [ { name: "history" data_type: TYPE_INT64 dims: [ -1 ] },\n'
        '        { name: "user" data_type: TYPE_FP32 dims: [ 16 ] } ]\n'
        'output [ { name: "score" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        "dynamic_batching { max_queue_delay_microseconds: 300000 }\n"
        'parameters [ { key: "ferry.profile.0" value { string_value: "history:1..512" } },\n'
        '             { key: "ferry.pad.history" value { string_value: "0" } } ]\n'
    )
    return root


def every_datatype() -> dict[str, np.ndarray]:
    """Two rows of each datatype the `types` model echoes, extremes included."""
    return {
        "BOOL": np.array([[True, False, True]] * 2),
        "UINT8": np.array([[0, 7, 255]] * 2, dtype=np.uint8),
        "UINT16": np.array([[0, 7, 65535]] * 2, dtype=np.uint16),
        "UINT32": np.array([[0, 7, 2**32 - 1]] * 2, dtype=np.uint32),
        "UINT64": np.array([[0, 7, 2**64 - 1]] * 2, dtype=np.uint64),
        "INT8": np.array([[-128, 0, 127]] * 2, dtype=np.int8),
        "INT16": np.array([[-(2**15), 0, 2**15 - 1]] * 2, dtype=np.int16),
        "INT32": np.array([[-(2**31), 0, 2**31 - 1]] * 2, dtype=np.int32),
        "INT64": np.array([[-(2**63), 0, 2**63 - 1]] * 2, dtype=np.int64),
        "FP16": np.array([[0.5, -2.0, 65504]] * 2, dtype=np.float16),
        "FP32": np.array([[0.5, -2.0, 3.25]] * 2, dtype=np.float32),
        "FP64": np.array([[0.5, -2.0, 1e300]] * 2, dtype=np.float64),
        "BYTES": np.array([[b"", b"ferry", "f\u00e4hre \u6e21\u8239".encode()]] * 2, dtype=object),
    }
