"""The accuracy gate: the built model against its source on held-out rows. Per output, the max
and mean absolute difference; with labels, AUC and log-loss of a binary output for both. An
INT8 build also gets a per-layer comparison (ONNX Runtime's QDQ debugging tools: each quantized
activation against the float model's, as a signal-to-noise ratio), whose worst layers the
refusal names: that is where to exclude nodes or change the calibration."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ferry.builder.samples import Samples
from ferry.builder.transforms import reader
from ferry.common.errors import BuildError

LAYER_ROWS = 256
"""Held-out rows the per-layer comparison runs (every activation of every layer is kept)."""

WORST_LAYERS = 5


@dataclass(frozen=True)
class OutputError:
    name: str
    max_abs: float
    mean_abs: float


@dataclass(frozen=True)
class LayerLoss:
    tensor: str
    sqnr_db: float  # signal to quantization noise: lower loses more


@dataclass(frozen=True)
class Accuracy:
    rows: int
    source: str  # where the held-out rows came from
    outputs: list[OutputError]
    auc: tuple[float, float] | None = None  # (source, built)
    log_loss: tuple[float, float] | None = None
    worst_layers: list[LayerLoss] = field(default_factory=list)

    @property
    def max_error(self) -> float:
        return max(o.max_abs for o in self.outputs)

    @property
    def auc_drop(self) -> float | None:
        return None if self.auc is None else self.auc[0] - self.auc[1]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_all(model: ort.InferenceSession, samples: Samples, batch: int = 1024) -> list[np.ndarray]:
    """Every output over every row, in batches."""
    parts = [model.run(None, feed) for feed in samples.batches(batch)]
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def compare(
    source: Path,
    built: Path,
    held_out: Samples,
    threads: int,
    labels: np.ndarray | None = None,
    layers: bool = False,
) -> Accuracy:
    reference = session(source, threads)
    names = [o.name for o in reference.get_outputs()]
    expected = run_all(reference, held_out)
    got = run_all(session(built, threads), held_out)
    outputs = []
    for name, a, b in zip(names, expected, got, strict=True):
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        outputs.append(OutputError(name, float(diff.max()), float(diff.mean())))
    auc = log_loss = None
    if labels is not None:
        probability = _binary_output(names, expected)
        auc = (_auc(labels, expected[probability]), _auc(labels, got[probability]))
        log_loss = (_log_loss(labels, expected[probability]), _log_loss(labels, got[probability]))
    worst = _worst_layers(source, built, held_out) if layers else []
    return Accuracy(held_out.rows, held_out.source, outputs, auc, log_loss, worst)


def enforce(accuracy: Accuracy, max_error: float | None, max_auc_drop: float | None) -> None:
    """Refuse a build whose outputs moved further than allowed, naming the layers that lost
    most when they were compared."""
    problems = []
    if max_error is not None and accuracy.max_error > max_error:
        worst = max(accuracy.outputs, key=lambda o: o.max_abs)
        problems.append(
            f"output {worst.name} differs from the source by up to "
            f"{worst.max_abs:.6g} (--max-error {max_error:g})"
        )
    drop = accuracy.auc_drop
    if max_auc_drop is not None and drop is not None and drop > max_auc_drop:
        problems.append(f"AUC fell by {drop:.6g} (--max-auc-drop {max_auc_drop:g})")
    if not problems:
        return
    message = "; ".join(problems) + f", on {accuracy.rows} held-out rows"
    if accuracy.worst_layers:
        layers = ", ".join(f"{w.tensor} ({w.sqnr_db:.1f} dB)" for w in accuracy.worst_layers)
        message += f"; the layers that lose most: {layers}"
    raise BuildError(f"the accuracy gate refused the build: {message}")


def _binary_output(names: list[str], outputs: list[np.ndarray]) -> int:
    for i, values in enumerate(outputs):
        if values.size == len(values) and values.min() >= 0.0 and values.max() <= 1.0:
            return i
    raise BuildError(
        f"--labels needs an output of one probability per row; outputs {names} are not"
    )


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a positive outscores a negative (ties count
    half), from average ranks."""
    y = labels.reshape(-1).astype(bool)
    s = scores.reshape(-1).astype(np.float64)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        raise BuildError("--labels must hold both classes among the held-out rows")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_scores = s[order]
    # average rank of each run of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(s)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _log_loss(labels: np.ndarray, scores: np.ndarray) -> float:
    y = labels.reshape(-1).astype(np.float64)
    p = np.clip(scores.reshape(-1).astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _worst_layers(source: Path, built: Path, held_out: Samples) -> list[LayerLoss]:
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    rows = held_out.take(np.arange(min(LAYER_ROWS, held_out.rows)))
    with tempfile.TemporaryDirectory(prefix="ferry-layers-") as work:
        float_path, qdq_path = Path(work) / "float.onnx", Path(work) / "qdq.onnx"
        modify_model_output_intermediate_tensors(str(source), str(float_path))
        modify_model_output_intermediate_tensors(str(built), str(qdq_path))
        floats = collect_activations(str(float_path), reader(rows))
        qdq = collect_activations(str(qdq_path), reader(rows))
    errors = compute_activation_error(create_activation_matching(qdq, floats))
    losses = [
        LayerLoss(name, float(e["xmodel_err"]))
        for name, e in errors.items()
        if "xmodel_err" in e and np.isfinite(e["xmodel_err"])
    ]
    return sorted(losses, key=lambda loss: loss.sqnr_db)[:WORST_LAYERS]
