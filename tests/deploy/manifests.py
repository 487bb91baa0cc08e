"""Rendering deploy/ with kustomize and reading what comes out, for the manifest tests.

Rendering needs `kubectl` (with its built-in kustomize) on PATH; tests that need it skip where
it is absent, saying so. Validation needs nothing outside the test extras.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("cpu", "gpu", "mig", "sidecar")
KUBERNETES_VERSION = "1.33.0"
"""The Kubernetes release the manifests are validated against (docs/deployment.md says so)."""
KSERVE_CRDS = ROOT.parent / "shared" / "k8s" / "kserve-crds"

Resource = dict[str, Any]


def kustomize(folder: Path) -> list[Resource]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with kustomize) is not installed: manifests not rendered")
    done = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [r for r in yaml.safe_load_all(done.stdout) if r]


def with_component(tmp: Path, overlay: str, component: str) -> list[Resource]:
    """Render an overlay with a component added, as a user's own kustomization would."""
    here = tmp / "kustomization"
    here.mkdir()
    relative = os.path.relpath(DEPLOY, here)
    (here / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [f"{relative}/overlays/{overlay}"],
                "components": [f"{relative}/components/{component}"],
            }
        )
    )
    return kustomize(here)


def of_kind(resources: list[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r["kind"] == kind]


def pod_containers(deployment: Resource) -> Iterator[Resource]:
    spec = deployment["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def ferry_container(deployment: Resource) -> Resource:
    (found,) = [c for c in pod_containers(deployment) if c["name"] == "ferry"]
    return found


def flag(container: Resource, name: str) -> str | None:
    """The value of `--name=value` among the container's args (the manifests' one spelling)."""
    for arg in container.get("args", []):
        key, _, value = arg.partition("=")
        if key == f"--{name}":
            return str(value)
    return None
