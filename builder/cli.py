"""The `ferry build` subcommand: its arguments, and the report it prints."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ferry.builder.options import BuildOptions, Calibration, Precision, Target
from ferry.common.errors import BuildError


def add_parser(commands: Any) -> None:
    build = commands.add_parser(
        "build",
        help="build a model version (optimized, or INT8 with calibration) into a repository",
        description="Build MODEL.onnx into DIR/NAME/VERSION with a manifest of how it was made; "
        "refuse, writing nothing, when the accuracy gate fails.",
    )
    build.add_argument("source", type=Path, metavar="MODEL.onnx")
    build.add_argument("--repository", type=Path, required=True, metavar="DIR")
    build.add_argument("--name", required=True)
    build.add_argument("--version", type=int, help="default: one above the highest there")
    build.add_argument(
        "--target", type=Target, choices=list(Target), default=Target.ONNXRUNTIME_CPU
    )
    build.add_argument(
        "--precision", type=Precision, choices=list(Precision), default=Precision.FP32
    )
    build.add_argument(
        "--calibration",
        type=Path,
        metavar="NPZ_OR_DIR",
        help="model inputs: an .npz, or a directory of them (ferry serve --capture)",
    )
    build.add_argument(
        "--method",
        type=Calibration,
        choices=list(Calibration),
        default=Calibration.ENTROPY,
        help="INT8 activation ranges (default entropy)",
    )
    build.add_argument("--percentile", type=float, default=99.999)
    build.add_argument(
        "--symmetric",
        action="store_true",
        help="signed activations, zero points 0 (what TensorRT needs)",
    )
    build.add_argument(
        "--per-tensor", action="store_true", help="weights per tensor, not per channel"
    )
    build.add_argument("--calibration-rows", type=int, default=2048)
    build.add_argument("--held-out-rows", type=int, default=10_000)
    build.add_argument("--max-error", type=float, help="refuse when any output moves further")
    build.add_argument(
        "--max-auc-drop", type=float, help="refuse when AUC falls further (needs --labels)"
    )
    build.add_argument("--labels", type=Path, metavar="NPY", help="0/1 per row of the data")
    build.add_argument("--max-batch-size", type=int, default=1024)
    build.add_argument("--batch-sizes", default="1,64,256", help="of the speed report")
    build.add_argument("--speed-seconds", type=float, default=1.0)
    build.add_argument("--threads", type=int, default=1, help="intra-op threads when measuring")
    build.add_argument("--instances", type=int, default=1, help="instance count of a new config")
    build.add_argument("--overwrite", action="store_true")
    trt = build.add_argument_group("tensorrt target")
    trt.add_argument(
        "--profile",
        action="append",
        default=[],
        help="an optimization profile, e.g. 'history:1..64..512' (repeat for more; default: "
        "the source config's ferry.profile.*)",
    )
    trt.add_argument("--optimization-level", type=int, default=3, help="TensorRT's 0..5")
    trt.add_argument("--timing-cache", type=Path, help="read if present, updated after the build")
    trt.add_argument("--version-compatible", action="store_true")
    trt.add_argument("--exclude-lean-runtime", action="store_true")


def options(args: argparse.Namespace) -> BuildOptions:
    try:
        sizes = tuple(int(b) for b in args.batch_sizes.split(",") if b)
    except ValueError as exc:
        raise BuildError(f"--batch-sizes {args.batch_sizes!r}: {exc}") from exc
    return BuildOptions(
        source=args.source,
        repository=args.repository,
        name=args.name,
        version=args.version,
        target=args.target,
        precision=args.precision,
        calibration=args.calibration,
        method=args.method,
        percentile=args.percentile,
        symmetric=args.symmetric,
        per_channel=not args.per_tensor,
        calibration_rows=args.calibration_rows,
        held_out_rows=args.held_out_rows,
        max_error=args.max_error,
        max_auc_drop=args.max_auc_drop,
        labels=args.labels,
        max_batch_size=args.max_batch_size,
        batch_sizes=sizes,
        speed_seconds=args.speed_seconds,
        threads=args.threads,
        instance_count=args.instances,
        overwrite=args.overwrite,
        profiles=tuple(args.profile),
        optimization_level=args.optimization_level,
        timing_cache=args.timing_cache,
        version_compatible=args.version_compatible,
        exclude_lean_runtime=args.exclude_lean_runtime,
    )


def run(args: argparse.Namespace) -> int:
    from ferry.builder.build import build
    from ferry.builder.speed import table

    try:
        result = build(options(args))
    except BuildError as exc:
        print(f"ferry build: {exc}", file=sys.stderr)
        return 2
    accuracy = result.accuracy
    print(f"built {result.folder} ({result.manifest['target']}, {result.manifest['precision']})")
    for output in accuracy.outputs:
        print(
            f"  {output.name}: max |diff| {output.max_abs:.6g}, mean {output.mean_abs:.6g} "
            f"on {accuracy.rows} held-out rows"
        )
    if accuracy.auc is not None and accuracy.log_loss is not None:
        print(
            f"  AUC {accuracy.auc[0]:.5f} -> {accuracy.auc[1]:.5f}, "
            f"log-loss {accuracy.log_loss[0]:.5f} -> {accuracy.log_loss[1]:.5f}"
        )
    if result.speed:
        print(table(result.speed, args.threads))
    print(f"manifest: {result.folder / 'manifest.json'}")
    return 0
