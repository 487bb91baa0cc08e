"""`ferry build`, step by step: check the options, read the data, make the model file, hold it
to the accuracy gate, measure it against the source, write the manifest, publish the version.
A refusal at any step writes nothing into the repository."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ferry.builder import manifest, publish, samples, speed, transforms
from ferry.builder.gate import Accuracy, compare, enforce
from ferry.builder.options import BuildOptions, Precision, Target
from ferry.builder.samples import Samples
from ferry.builder.speed import SpeedRow
from ferry.common.errors import BuildError

SYNTHETIC_ROWS = 2048
"""Rows made up for a build given no data (FP32: nothing to calibrate; the gate checks that the
optimized graph computes what the source does)."""


@dataclass(frozen=True)
class BuildResult:
    folder: Path  # the published version folder
    accuracy: Accuracy
    speed: list[SpeedRow]
    manifest: dict[str, Any]


def build(options: BuildOptions) -> BuildResult:
    options.check()
    if options.target is Target.TENSORRT:
        raise BuildError(
            "--target tensorrt builds a plan with the TensorRT builder, which is not part of "
            "this build of ferry; run ferry build in NVIDIA's TensorRT container "
            "(nvcr.io/nvidia/tensorrt), or build the plan with trtexec"
        )
    started = manifest.now()
    specs = samples.model_inputs(options.source)
    data = (
        samples.read(options.calibration, specs)
        if options.calibration is not None
        else samples.synthetic(specs, SYNTHETIC_ROWS)
    )
    labels = _labels(options, data)
    calibration, held_out = samples.split(data, options.calibration_rows, options.held_out_rows)
    held_labels = None if labels is None else labels[held_out.index]
    version = options.version or publish.next_version(options.repository / options.name)
    options.repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".building-{options.name}-", dir=options.repository))
    try:
        artifact = staging / "model.onnx"
        _make(options, calibration, artifact)
        quantized = options.precision is Precision.INT8
        accuracy = compare(
            options.source, artifact, held_out, options.threads, held_labels, layers=quantized
        )
        enforce(accuracy, options.max_error, options.max_auc_drop)
        speeds = (
            speed.measure(
                options.source,
                artifact,
                held_out,
                options.batch_sizes,
                options.speed_seconds,
                options.threads,
            )
            if options.target is Target.ONNXRUNTIME_CPU
            else []  # a GPU target's speed is the GPU's: this host's CPU would say nothing
        )
        if speeds:
            (staging / manifest.SPEED_FILE).write_text(speed.table(speeds, options.threads) + "\n")
        record = {
            "name": options.name,
            "version": version,
            "target": str(options.target),
            "precision": str(options.precision),
            "source": str(options.source),
            "source_sha256": manifest.file_sha256(options.source),
            "artifact": artifact.name,
            "artifact_sha256": manifest.file_sha256(artifact),
            "calibration": {
                "source": data.source,
                "rows": calibration.rows if quantized else 0,
                "method": str(options.method) if quantized else None,
            },
            "calibration_sha256": (
                manifest.arrays_sha256(dict(calibration.arrays)) if quantized else ""
            ),
            "held_out_rows": held_out.rows,
            "settings": manifest.settings(options),
            "accuracy": accuracy.as_dict(),
            "speed": [row.as_dict() for row in speeds],
            "libraries": manifest.libraries(),
            "host": manifest.host(),
            "started_at": started,
            "built_at": manifest.now(),
        }
        manifest.write(staging, record)
        config = publish.config_text(
            options.name,
            str(options.target),
            options.max_batch_size,
            options.queue_delay_us,
            options.instance_count,
        )
        folder = publish.publish(
            staging, options.repository, options.name, version, config, options.overwrite
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BuildResult(folder, accuracy, speeds, record)


def _make(options: BuildOptions, calibration: Samples, artifact: Path) -> None:
    if options.precision is Precision.INT8:
        symmetric = options.symmetric or options.target is not Target.ONNXRUNTIME_CPU
        transforms.quantize_int8(
            options.source,
            artifact,
            calibration,
            options.method,
            options.percentile,
            symmetric,
            options.per_channel,
        )
    elif options.target is Target.ONNXRUNTIME_CPU:
        transforms.optimize(options.source, artifact)
    else:  # ONNX Runtime on CUDA optimizes for the GPU it loads on: the source as it is
        shutil.copyfile(options.source, artifact)


def _labels(options: BuildOptions, data: Samples) -> np.ndarray | None:
    if options.labels is None:
        return None
    try:
        loaded: np.ndarray = np.load(options.labels, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BuildError(f"--labels {options.labels}: not a readable .npy: {exc}") from exc
    labels = loaded.reshape(-1)
    if len(labels) != data.rows:
        raise BuildError(f"--labels holds {len(labels)} labels for {data.rows} rows of data")
    if not np.isin(labels, (0, 1)).all():
        raise BuildError("--labels must hold 0 or 1 per row")
    return labels
