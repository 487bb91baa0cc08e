"""`ferry build`, step by step: check the options, read the data, make the model file, hold it
to the accuracy gate, measure it against the source, write the manifest, publish the version.
A refusal at any step writes nothing into the repository."""

from __future__ import annotations

import shutil
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format

from ferry.builder import manifest, publish, samples, speed, tensorrt_plan, transforms
from ferry.builder.gate import Accuracy, compare, enforce
from ferry.builder.options import BuildOptions, Precision, Target
from ferry.builder.samples import Samples
from ferry.builder.speed import SpeedRow
from ferry.common.digests import sha256_of
from ferry.common.errors import BuildError
from ferry.proto import model_config_pb2 as mc

SYNTHETIC_ROWS = 2048
"""Rows made up for a build given no data (FP32: nothing to calibrate; the gate checks that the
optimized graph computes what the source does)."""


@dataclass(frozen=True)
class BuildResult:
    folder: Path  # the published version folder
    accuracy: Accuracy
    speed: list[SpeedRow]
    manifest: dict[str, Any]


def build(options: BuildOptions, trt: types.ModuleType | None = None) -> BuildResult:
    """`trt`: the TensorRT module for the tensorrt target (default: imported; tests pass a
    double of its builder API)."""
    options.check()
    if options.target is Target.TENSORRT:
        trt = trt or tensorrt_plan.tensorrt()  # no builder: refused before any work
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
        converted = staging / "model.onnx"
        kept_fp32, checked = _make(options, calibration, converted)
        quantized = options.precision is Precision.INT8
        # The gate runs the graph in its new precision on this host's CPU (ONNX Runtime): for
        # TensorRT, what the conversion or quantization changed, before TensorRT's kernels.
        accuracy = compare(
            options.source, checked, held_out, options.threads, held_labels, layers=quantized
        )
        enforce(accuracy, options.max_error, options.max_auc_drop)
        artifact, plan = converted, None
        if options.target is Target.TENSORRT:
            assert trt is not None
            artifact = staging / "model.plan"
            shapes = _profiles(options, specs)
            plan = tensorrt_plan.build_plan(
                converted, artifact, shapes, _plan_options(options), trt
            )
            for made in staging.glob("*.onnx"):
                made.unlink()
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
            "source_sha256": sha256_of(options.source),
            "artifact": artifact.name,
            "artifact_sha256": sha256_of(artifact),
            "calibration": {
                "source": data.source,
                "rows": calibration.rows if quantized else 0,
                "method": str(options.method) if quantized else None,
            },
            "calibration_sha256": (
                manifest.arrays_sha256(dict(calibration.arrays)) if quantized else ""
            ),
            "held_out_rows": held_out.rows,
            "kept_in_fp32": kept_fp32,
            "gate": _gate_description(options),
            "tensorrt": plan,
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
            options.target,
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


def _make(options: BuildOptions, calibration: Samples, artifact: Path) -> tuple[list[str], Path]:
    """The ONNX graph in its new precision; the nodes an FP16 build keeps in FP32, and the
    graph the gate runs (the artifact, or for BF16 its emulation in FP32: the weights rounded)."""
    if options.precision is Precision.BF16:
        emulation = artifact.with_name("bf16-emulated.onnx")
        transforms.to_bf16(options.source, artifact, emulation)
        return [], emulation
    if options.precision is Precision.INT8:
        # GPU targets take symmetric INT8 (TensorRT's explicit quantization needs zero points 0)
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
    elif options.precision is Precision.FP16:
        return transforms.to_fp16(options.source, artifact, calibration), artifact
    elif options.target is Target.ONNXRUNTIME_CPU:
        transforms.optimize(options.source, artifact)
    else:  # a GPU backend optimizes for the GPU it loads on: the source as it is
        shutil.copyfile(options.source, artifact)
    return [], artifact


def _plan_options(options: BuildOptions) -> tensorrt_plan.PlanOptions:
    return tensorrt_plan.PlanOptions(
        optimization_level=options.optimization_level,
        timing_cache=options.timing_cache,
        version_compatible=options.version_compatible,
        exclude_lean_runtime=options.exclude_lean_runtime,
    )


def _profiles(
    options: BuildOptions, specs: list[samples.InputSpec]
) -> list[tensorrt_plan.ProfileShapes]:
    """`--profile`, else the source model's config (`ferry.profile.<N>` beside the version
    folder the source sits in), else one profile over the fixed dims; rows 1..max_batch_size,
    optimal at the largest speed-report batch size."""
    texts = list(options.profiles) or _config_profiles(options.source)
    dims = {s.name: s.dims for s in specs}
    best = min(max(options.batch_sizes), options.max_batch_size)
    return [
        tensorrt_plan.profile_shapes(text, dims, options.max_batch_size, best)
        for text in (texts or [""])
    ]


def _config_profiles(source: Path) -> list[str]:
    config = source.parent.parent / "config.pbtxt"
    if not config.is_file():
        return []
    parsed = mc.ModelConfig()
    try:
        text_format.Parse(config.read_text(), parsed)
    except text_format.ParseError as exc:
        raise BuildError(f"{config}: {exc}") from exc
    found = {
        int(key.rsplit(".", 1)[1]): value.string_value
        for key, value in parsed.parameters.items()
        if key.startswith("ferry.profile.") and key.rsplit(".", 1)[1].isdigit()
    }
    return [found[i] for i in sorted(found)]


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


def _gate_description(options: BuildOptions) -> str:
    if options.precision is Precision.BF16:
        return (
            "the FP32 graph with its weights rounded to BF16, on this host's CPU (ONNX Runtime "
            "has no BF16 kernels for most operators; BF16 arithmetic is not emulated)"
        )
    if options.target is Target.TENSORRT:
        return "the converted ONNX graph on this host's CPU (ONNX Runtime), before TensorRT"
    return "the built model on this host's CPU (ONNX Runtime)"
