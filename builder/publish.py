"""Put a built version into a model repository: the version folder is made beside its final
place and renamed into it, so that a server polling the repository never loads half of it; a
model folder without a config gets one (the server completes its inputs and outputs from the
model file, as Triton's auto-complete does)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ferry.builder.options import Target
from ferry.common.errors import BuildError

PLATFORMS = {
    Target.ONNXRUNTIME_CPU: "onnxruntime_onnx",
    Target.ONNXRUNTIME_CUDA: "onnxruntime_onnx",
    Target.TENSORRT: "tensorrt_plan",
}


def next_version(model_folder: Path) -> int:
    if not model_folder.is_dir():
        return 1
    versions = [int(p.name) for p in model_folder.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def config_text(
    name: str, target: Target, max_batch_size: int, queue_delay_us: int, instances: int
) -> str:
    kind = "KIND_CPU" if target is Target.ONNXRUNTIME_CPU else "KIND_GPU"
    return (
        f'name: "{name}"\n'
        f'platform: "{PLATFORMS[target]}"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}\n"
        f"instance_group [ {{ count: {instances} kind: {kind} }} ]\n"
    )


def publish(
    staged: Path, repository: Path, name: str, version: int, config: str, overwrite: bool
) -> Path:
    """Move the staged version folder into `repository/name/version`; write `config` as the
    model's config.pbtxt when it has none (an existing one is the operator's and stays)."""
    model_folder = repository / name
    final = model_folder / str(version)
    if final.exists():
        if not overwrite:
            raise BuildError(f"{final} exists: choose another --version, or --overwrite")
        shutil.rmtree(final)
    model_folder.mkdir(parents=True, exist_ok=True)
    config_path = model_folder / "config.pbtxt"
    if not config_path.exists():
        partial = model_folder / ".config.pbtxt.tmp"
        partial.write_text(config)
        os.replace(partial, config_path)
    staged.chmod(0o755)  # made private (mkdtemp); a server may run as another user
    os.replace(staged, final)
    return final
