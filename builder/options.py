"""What `ferry build` is asked to make: target, precision, calibration and gate settings,
checked together before any work starts."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from ferry.common.errors import BuildError


class Target(StrEnum):
    ONNXRUNTIME_CPU = "onnxruntime-cpu"
    ONNXRUNTIME_CUDA = "onnxruntime-cuda"
    TENSORRT = "tensorrt"


class Precision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"


class Calibration(StrEnum):
    ENTROPY = "entropy"  # KL divergence between the float and the quantized histograms
    PERCENTILE = "percentile"
    MINMAX = "minmax"


PRECISIONS: dict[Target, tuple[Precision, ...]] = {
    Target.ONNXRUNTIME_CPU: (Precision.FP32, Precision.INT8),
    Target.ONNXRUNTIME_CUDA: (Precision.FP32, Precision.FP16, Precision.INT8),
    Target.TENSORRT: (Precision.FP32, Precision.FP16, Precision.BF16, Precision.INT8),
}
"""What each target can build. BF16 only for TensorRT: ONNX Runtime has BF16 kernels for few
operators, on CPU and on CUDA alike."""


@dataclass(frozen=True)
class BuildOptions:
    source: Path
    repository: Path
    name: str
    version: int | None = None  # None: one above the highest in the repository
    target: Target = Target.ONNXRUNTIME_CPU
    precision: Precision = Precision.FP32
    calibration: Path | None = None  # .npz file, or a directory of them (capture)
    method: Calibration = Calibration.ENTROPY
    percentile: float = 99.999
    symmetric: bool = False  # activations too (weights always are): zero points 0
    per_channel: bool = True
    calibration_rows: int = 2048  # at most; the rest of the data is held out for the gate
    held_out_rows: int = 10_000  # at most
    max_error: float | None = None  # max |difference| over every output element
    max_auc_drop: float | None = None
    labels: Path | None = None  # .npy of 0/1 per held-out row, for AUC and log-loss
    max_batch_size: int = 1024
    batch_sizes: tuple[int, ...] = (1, 64, 256)  # of the speed report
    speed_seconds: float = 1.0  # per batch size and model
    threads: int = 1  # intra-op threads of the gate's and speed report's sessions
    instance_count: int = 1
    queue_delay_us: int = 200
    overwrite: bool = False
    # TensorRT
    profiles: tuple[str, ...] = ()  # `ferry.profile` syntax; () = the source config's, or fixed
    optimization_level: int = 3
    timing_cache: Path | None = None
    version_compatible: bool = False
    exclude_lean_runtime: bool = False

    def check(self) -> None:
        """Refuse what cannot be built before anything is read or written."""
        if not self.source.is_file():
            raise BuildError(f"{self.source}: no such ONNX file")
        allowed = PRECISIONS[self.target]
        if self.precision not in allowed:
            names = ", ".join(allowed)
            raise BuildError(f"--target {self.target} builds {names}, not {self.precision}")
        if self.precision is Precision.INT8 and self.calibration is None:
            raise BuildError(
                "--precision int8 needs --calibration: an .npz of model inputs, or the directory "
                "`ferry serve --capture` wrote (calibration that matches production traffic)"
            )
        if self.calibration is not None and not self.calibration.exists():
            raise BuildError(f"--calibration {self.calibration}: no such file or directory")
        if self.labels is not None and not self.labels.is_file():
            raise BuildError(f"--labels {self.labels}: no such file")
        if self.max_auc_drop is not None and self.labels is None:
            raise BuildError("--max-auc-drop needs --labels")
        if not 0.0 < self.percentile <= 100.0:
            raise BuildError(f"--percentile must be in (0, 100], got {self.percentile}")
        if self.version is not None and self.version < 1:
            raise BuildError(f"--version must be 1 or more, got {self.version}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise BuildError(f"--name {self.name!r} is not a model folder name")
        if any(b < 1 or b > self.max_batch_size for b in self.batch_sizes):
            raise BuildError(
                f"batch sizes {list(self.batch_sizes)} must be in 1..{self.max_batch_size}"
            )
