"""`ferry example-repo DIR`: writes the example model repository, byte-identical on every run.

Weights come from fixed seeds and the graphs are built op by op with onnx.helper, so nothing is
downloaded. Ids index embedding tables through `Mod`, so any int64 id is valid input: a single
odd id can never fail a whole batch of other callers' rows.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8

DLRM_TABLES = 26
HISTORY_ITEMS = 10_000
HISTORY_DIM = 16

CONFIGS = {
    "dlrm": """\
name: "dlrm"
platform: "onnxruntime_onnx"
max_batch_size: 1024
input [
  { name: "dense" data_type: TYPE_FP32 dims: [ 13 ] },
  { name: "sparse" data_type: TYPE_INT64 dims: [ 26 ] }
]
output [
  { name: "ctr" data_type: TYPE_FP32 dims: [ 1 ] }
]
dynamic_batching {
  max_queue_delay_microseconds: 200
}
instance_group [ { count: 1 kind: KIND_CPU } ]
""",
    "dlrm_large": """\
name: "dlrm_large"
platform: "onnxruntime_onnx"
max_batch_size: 16384
input [
  { name: "dense" data_type: TYPE_FP32 dims: [ 13 ] },
  { name: "sparse" data_type: TYPE_INT64 dims: [ 26 ] }
]
output [ { name: "ctr" data_type: TYPE_FP32 dims: [ 1 ] } ]
# Requests of 1024 rows gather into batches of up to 16 of them while the GPU runs the last.
dynamic_batching { max_queue_delay_microseconds: 2000 }
instance_group [ { count: 2 kind: KIND_GPU } ]
""",
    "echo": """\
name: "echo"
platform: "onnxruntime_onnx"
max_batch_size: 1024
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]
dynamic_batching { }
instance_group [ { count: 1 kind: KIND_CPU } ]
""",
    "history": """\
name: "history"
platform: "onnxruntime_onnx"
max_batch_size: 256
input [
  { name: "history" data_type: TYPE_INT64 dims: [ -1 ] },
  { name: "user" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [ { name: "score" data_type: TYPE_FP32 dims: [ 1 ] } ]
dynamic_batching { max_queue_delay_microseconds: 200 }
instance_group [ { count: 1 kind: KIND_CPU } ]
# Two optimization profiles, one instance each: short histories batch with short ones only.
# Id 0 is padding that the model ignores, so histories of different lengths share a batch.
parameters [
  { key: "ferry.profile.0" value: { string_value: "history:1..64" } },
  { key: "ferry.profile.1" value: { string_value: "history:1..512" } },
  { key: "ferry.pad.history" value: { string_value: "0" } }
]
""",
    # The models below carry the names and tensors of the models Triton's client examples call
    # ("simple", "simple_string", "simple_identity", "simple_int8") or expect (an image
    # classifier with labels), so those examples run against the example repository unchanged.
    "simple": """\
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
""",
    "simple_string": """\
name: "simple_string"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_STRING dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_STRING dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_STRING dims: [ 16 ] }
]
""",
    "simple_identity": """\
name: "simple_identity"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
""",
    "simple_int8": """\
name: "simple_int8"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_INT8 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_INT8 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_INT8 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_INT8 dims: [ 16 ] }
]
""",
    "classifier": """\
name: "classifier"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [
  { name: "image" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 32, 32 ] }
]
# The network ends in a [10, 1, 1] map; clients see a vector of 10 scores, each class named in
# labels.txt (ask for top-k classes with the `classification` output parameter).
output [
  {
    name: "scores"
    data_type: TYPE_FP32
    dims: [ 10 ]
    reshape { shape: [ 10, 1, 1 ] }
    label_filename: "labels.txt"
  }
]
dynamic_batching { }
""",
}

LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
EXTRA_FILES = {"classifier": {"labels.txt": "".join(f"{label}\n" for label in LABELS)}}


def _weights(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    scale = 1.0 / np.sqrt(shape[0])
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _dense_layers(
    rng: np.random.Generator, x: str, sizes: list[int], prefix: str, last_relu: bool
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """MatMul + Add (+ Relu) per layer; returns nodes, weights and the last output's name."""
    nodes, inits = [], []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        w, b = f"{prefix}{i}_w", f"{prefix}{i}_b"
        inits += [_weights(rng, w, (n_in, n_out)), _weights(rng, b, (n_out,))]
        nodes += [
            helper.make_node("MatMul", [x, w], [f"{prefix}{i}_mm"]),
            helper.make_node("Add", [f"{prefix}{i}_mm", b], [f"{prefix}{i}_lin"]),
        ]
        x = f"{prefix}{i}_lin"
        if i < len(sizes) - 2 or last_relu:
            nodes.append(helper.make_node("Relu", [x], [f"{prefix}{i}_act"]))
            x = f"{prefix}{i}_act"
    return nodes, inits, x


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ferry-examples"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, name)


@dataclass(frozen=True)
class DlrmShape:
    """The sizes of a DLRM-style model: embedding tables, the two MLPs and how they meet."""

    tables: int
    rows: int  # per table
    dim: int  # embedding width
    bottom: tuple[int, ...]  # dense MLP widths, from the 13 dense features
    top: tuple[int, ...]  # top MLP widths after the feature interaction, down to the logit
    # "dot": pairwise dot products of the 27 vectors (26 embeddings and the bottom MLP's output,
    # which must then be `dim` wide), as in the DLRM paper; "concat": the vectors side by side.
    interaction: str = "dot"


# The example: the DLRM paper's architecture at the sizes of the reference implementation's
# Criteo Terabyte (MLPerf) configuration: embedding width 128, bottom MLP 13-512-256-128,
# pairwise dot interaction (351 products, no self-products), top MLP 479-1024-1024-512-256-1.
# The tables are small (1000 rows each) so the file stays small; the compute per row is the
# reference's. A model much lighter than this measures Python gRPC's per-request cost rather
# than serving; recommendation models in production are this size or larger.
DLRM = DlrmShape(DLRM_TABLES, 1000, 128, (13, 512, 256, 128), (1024, 1024, 512, 256, 1))
# The heavier GPU example: 26 tables of 100,000 x 64 and a 2048-1024-1 top MLP over the
# concatenated vectors (172M weights), which bench/gpu_serving.py measures GPUs with.
DLRM_LARGE = DlrmShape(
    DLRM_TABLES, 100_000, 64, (13, 256, 64), (2048, 1024, 1), interaction="concat"
)
# The light variant, embedding width 16 (about 0.74M weights): its batches cost little next to
# the front end's work per request, which bench/front_end_cost.py measures with it (and
# bench/slo_batching.py --light, the regime of a GPU on a CPU).
DLRM_LIGHT = DlrmShape(DLRM_TABLES, 1000, 16, (13, 64, 16), (512, 256, 1))


def dlrm_model(shape: DlrmShape = DLRM, name: str = "dlrm") -> onnx.ModelProto:
    """DLRM-style CTR: embedding tables plus a dense MLP, sigmoid output (`ctr`)."""
    rng = np.random.default_rng(2)
    inits = [
        _weights(rng, "tables", (shape.tables * shape.rows, shape.dim)),
        _const("rows_per_table", np.array(shape.rows, dtype=np.int64)),
        _const("table_offsets", np.arange(shape.tables, dtype=np.int64) * shape.rows),
    ]
    nodes = [
        helper.make_node("Mod", ["sparse", "rows_per_table"], ["local_ids"]),
        helper.make_node("Add", ["local_ids", "table_offsets"], ["global_ids"]),
        # [batch, tables, dim]
        helper.make_node("Gather", ["tables", "global_ids"], ["embedded"], axis=0),
    ]
    bottom, w, dense_out = _dense_layers(rng, "dense", list(shape.bottom), "bottom", True)
    nodes += bottom
    inits += w
    if shape.interaction == "dot":
        interact, consts, width = _dot_interaction(shape, dense_out)
    else:
        interact, consts, width = _concat_interaction(shape, dense_out)
    nodes += interact
    inits += consts
    top, w, logit = _dense_layers(rng, "features", [width, *shape.top], "top", last_relu=False)
    nodes += top
    inits += w
    nodes.append(helper.make_node("Sigmoid", [logit], ["ctr"]))
    graph = helper.make_graph(
        nodes,
        name,
        [
            helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["batch", 13]),
            helper.make_tensor_value_info("sparse", TensorProto.INT64, ["batch", shape.tables]),
        ],
        [helper.make_tensor_value_info("ctr", TensorProto.FLOAT, ["batch", 1])],
        inits,
    )
    return _model(graph)


def _dot_interaction(
    shape: DlrmShape, dense_out: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], int]:
    """`features` = the bottom MLP's output and the dot product of every pair of the 27 vectors
    (each pair once, no self-products): the feature interaction of the DLRM paper."""
    vectors = shape.tables + 1
    pairs = np.array([i * vectors + j for i in range(vectors) for j in range(i)], dtype=np.int64)
    consts = [
        _const("dense_as_vector", np.array([-1, 1, shape.dim], dtype=np.int64)),
        _const("all_dots_flat", np.array([-1, vectors * vectors], dtype=np.int64)),
        _const("pairs", pairs),
    ]
    nodes = [
        helper.make_node("Reshape", [dense_out, "dense_as_vector"], ["dense_vector"]),
        helper.make_node("Concat", ["dense_vector", "embedded"], ["vectors"], axis=1),
        helper.make_node("Transpose", ["vectors"], ["vectors_t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["vectors", "vectors_t"], ["all_dots"]),
        helper.make_node("Reshape", ["all_dots", "all_dots_flat"], ["all_dots_row"]),
        helper.make_node("Gather", ["all_dots_row", "pairs"], ["dots"], axis=1),
        helper.make_node("Concat", [dense_out, "dots"], ["features"], axis=1),
    ]
    return nodes, consts, shape.dim + len(pairs)


def _concat_interaction(
    shape: DlrmShape, dense_out: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], int]:
    """`features` = the embeddings and the bottom MLP's output side by side."""
    consts = [_const("flat_shape", np.array([-1, shape.tables * shape.dim], dtype=np.int64))]
    nodes = [
        helper.make_node("Reshape", ["embedded", "flat_shape"], ["embedded_flat"]),
        helper.make_node("Concat", ["embedded_flat", dense_out], ["features"], axis=1),
    ]
    return nodes, consts, shape.tables * shape.dim + shape.bottom[-1]


def dlrm_large_model() -> onnx.ModelProto:
    return dlrm_model(DLRM_LARGE, "dlrm_large")


def echo_model() -> onnx.ModelProto:
    """y = x: measures the serving overhead alone."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "echo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "length"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "length"])],
    )
    return _model(graph)


def history_model() -> onnx.ModelProto:
    """Mean of the item embeddings of a variable-length history (id 0 = padding, ignored),
    joined with user features, through an MLP to a score."""
    rng = np.random.default_rng(3)
    inits = [
        _weights(rng, "items", (HISTORY_ITEMS, HISTORY_DIM)),
        _const("item_count", np.array(HISTORY_ITEMS, dtype=np.int64)),
        _const("zero", np.array(0, dtype=np.int64)),
        _const("one", np.array(1.0, dtype=np.float32)),
        _const("axis1", np.array([1], dtype=np.int64)),
        _const("axis2", np.array([2], dtype=np.int64)),
    ]
    nodes = [
        helper.make_node("Mod", ["history", "item_count"], ["item_ids"]),
        helper.make_node("Gather", ["items", "item_ids"], ["item_vecs"], axis=0),
        helper.make_node("Equal", ["history", "zero"], ["is_pad"]),
        helper.make_node("Not", ["is_pad"], ["is_item"]),
        helper.make_node("Cast", ["is_item"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["item_vecs", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask", "axis1"], ["count"], keepdims=1),
        helper.make_node("Max", ["count", "one"], ["safe_count"]),
        helper.make_node("Div", ["summed", "safe_count"], ["pooled"]),
        helper.make_node("Concat", ["pooled", "user"], ["features"], axis=1),
    ]
    mlp, w, logit = _dense_layers(rng, "features", [2 * HISTORY_DIM, 64, 1], "mlp", False)
    nodes += mlp
    inits += w
    nodes.append(helper.make_node("Sigmoid", [logit], ["score"]))
    graph = helper.make_graph(
        nodes,
        "history",
        [
            helper.make_tensor_value_info("history", TensorProto.INT64, ["batch", "length"]),
            helper.make_tensor_value_info("user", TensorProto.FLOAT, ["batch", HISTORY_DIM]),
        ],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        inits,
    )
    return _model(graph)


def _two_inputs(kind: int) -> list[onnx.ValueInfoProto]:
    return [helper.make_tensor_value_info(n, kind, ["batch", 16]) for n in ("INPUT0", "INPUT1")]


def _two_outputs(kind: int) -> list[onnx.ValueInfoProto]:
    return [helper.make_tensor_value_info(n, kind, ["batch", 16]) for n in ("OUTPUT0", "OUTPUT1")]


def simple_model() -> onnx.ModelProto:
    """OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (INT32): the tensors of Triton's
    "simple" example model."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "simple",
        _two_inputs(TensorProto.INT32),
        _two_outputs(TensorProto.INT32),
    )
    return _model(graph)


def simple_int8_model() -> onnx.ModelProto:
    """The "simple" sums on INT8 (wrapping as int8 arithmetic does)."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "simple_int8",
        _two_inputs(TensorProto.INT8),
        _two_outputs(TensorProto.INT8),
    )
    return _model(graph)


def simple_identity_model() -> onnx.ModelProto:
    """Strings in, the same strings out."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "simple_identity",
        [helper.make_tensor_value_info("INPUT0", TensorProto.STRING, ["batch", "length"])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, ["batch", "length"])],
    )
    return _model(graph)


def simple_string_model() -> onnx.ModelProto:
    """The same sums on numbers written as strings (BYTES in, BYTES out)."""
    nodes = [
        helper.make_node("Cast", ["INPUT0"], ["a"], to=TensorProto.INT32),
        helper.make_node("Cast", ["INPUT1"], ["b"], to=TensorProto.INT32),
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("Sub", ["a", "b"], ["difference"]),
        helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=TensorProto.STRING),
        helper.make_node("Cast", ["difference"], ["OUTPUT1"], to=TensorProto.STRING),
    ]
    graph = helper.make_graph(
        nodes,
        "simple_string",
        _two_inputs(TensorProto.STRING),
        _two_outputs(TensorProto.STRING),
    )
    return _model(graph)


def classifier_model() -> onnx.ModelProto:
    """A tiny image classifier: 3x32x32 images, a 3x3 convolution, average pooling and a
    linear layer to 10 class scores (softmax), shaped [10, 1, 1] per image."""
    rng = np.random.default_rng(11)
    inits = [
        _weights(rng, "conv_w", (8, 3, 3, 3)),
        _weights(rng, "fc_w", (8, len(LABELS))),
        _const("map_shape", np.array([-1, len(LABELS), 1, 1], dtype=np.int64)),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv_w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"]),
        helper.make_node("MatMul", ["features", "fc_w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("Reshape", ["probabilities", "map_shape"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", len(LABELS), 1, 1])],
        inits,
    )
    return _model(graph)


BUILDERS = {
    "dlrm": dlrm_model,
    "echo": echo_model,
    "history": history_model,
    "simple": simple_model,
    "simple_string": simple_string_model,
    "simple_identity": simple_identity_model,
    "simple_int8": simple_int8_model,
    "classifier": classifier_model,
}
LARGE_BUILDERS = {"dlrm_large": dlrm_large_model}


def write_example_repo(root: Path, large: bool = False) -> list[Path]:
    """Write every example model (config.pbtxt and 1/model.onnx); returns the files written.

    `large` adds `dlrm_large` (most of a gigabyte, for GPUs; it takes a few seconds to generate)."""
    written = []
    builders = {**BUILDERS, **(LARGE_BUILDERS if large else {})}
    for name, build in builders.items():
        folder = root / name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        config = folder / "config.pbtxt"
        config.write_text(CONFIGS[name], encoding="utf-8")
        model = folder / "1" / "model.onnx"
        model.write_bytes(build().SerializeToString(deterministic=True))
        written += [config, model]
        for file_name, text in EXTRA_FILES.get(name, {}).items():
            extra = folder / file_name
            extra.write_text(text, encoding="utf-8")
            written.append(extra)
    return written


INT8_CALIBRATION_ROWS = 4096


def write_int8_dlrm(root: Path) -> list[Path]:
    """`dlrm_int8`: `dlrm` (already in `root`) built to INT8 by `ferry build`, with entropy
    calibration on inputs drawn as the example clients draw theirs, behind a gate of 0.01 on
    `ctr`. Skipped when the version there was built from this very `dlrm` (its manifest says
    so): the build takes seconds and its manifest records the time."""
    from ferry.builder.build import build
    from ferry.builder.manifest import MANIFEST_FILE
    from ferry.builder.options import BuildOptions, Precision
    from ferry.common.digests import sha256_of

    source = root / "dlrm" / "1" / "model.onnx"
    folder = root / "dlrm_int8" / "1"
    try:
        made = json.loads((folder / MANIFEST_FILE).read_text())
        if made.get("source_sha256") == sha256_of(source):
            return []
    except (OSError, ValueError):
        pass
    rng = np.random.default_rng(11)
    with tempfile.TemporaryDirectory(prefix="ferry-calibration-") as work:
        data = Path(work) / "calibration.npz"
        np.savez(
            data,
            dense=rng.standard_normal((INT8_CALIBRATION_ROWS, 13)).astype(np.float32),
            sparse=rng.integers(0, 10**6, (INT8_CALIBRATION_ROWS, DLRM_TABLES)).astype(np.int64),
        )
        options = BuildOptions(
            source=source,
            repository=root,
            name="dlrm_int8",
            version=1,
            precision=Precision.INT8,
            calibration=data,
            max_error=0.01,
            batch_sizes=(256,),
            speed_seconds=0.2,
            overwrite=True,
        )
        result = build(options)
    return sorted(p for p in result.folder.parent.rglob("*") if p.is_file())
