"""The manifest: how a built version was made, written beside its model file as
`manifest.json`. Source and calibration data by sha256, every setting, tool and library
versions, the accuracy and speed reports, host and time. The server reads it at load and names
it in the model's config parameters and the access log, and every response carries the model
file's sha256, which the manifest records: one response leads to how its model was made."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
SPEED_FILE = "speed.txt"

PARAMETER_PREFIX = "ferry.build."
"""Config parameters that carry a built version's manifest summary (server/repository.py)."""

SUMMARY_FIELDS = ("target", "precision", "source_sha256", "calibration_sha256", "built_at")


def arrays_sha256(arrays: dict[str, Any]) -> str:
    """Of calibration data as the build saw it: names, dtypes, shapes and bytes, in name order
    (the same rows from other files give the same digest)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = arrays[name]
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def host() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "gpu": _gpu_name(),
    }


def _gpu_name() -> str | None:
    try:
        from cuda.bindings import runtime

        err, props = runtime.cudaGetDeviceProperties(0)
        return props.name.decode(errors="replace").rstrip("\x00") if int(err) == 0 else None
    except Exception:  # no CUDA here: the field stays empty
        return None


def libraries() -> dict[str, str]:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in ("ferry", "onnxruntime", "onnx", "numpy", "tensorrt"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def write(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def summary(folder: Path) -> dict[str, str]:
    """What a server shows of a version's manifest (config parameters, the access log): its
    sha256 and the fields that tell builds apart; empty when the version has none or it does
    not parse (a version made by hand serves the same)."""
    path = folder / MANIFEST_FILE
    try:
        raw = path.read_bytes()
        manifest = json.loads(raw)
    except (OSError, ValueError):
        return {}
    if not isinstance(manifest, dict):
        return {}
    shown = {"manifest_sha256": hashlib.sha256(raw).hexdigest()}
    for key in SUMMARY_FIELDS:
        value = manifest.get(key)
        if isinstance(value, str | int | float):
            shown[key] = str(value)
    return shown


def settings(options: Any) -> dict[str, Any]:
    """Every option of the build (paths as text)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}
