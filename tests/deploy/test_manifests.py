"""deploy/: every overlay renders, passes strict schema validation for a stated Kubernetes
release and yamllint, and holds together: the drain fits the grace period, selectors select,
probes ask the right health service, the autoscaler's metric is one Ferry exports, and the
KServe resources use only fields KServe's CRDs declare.

Offline only: no cluster runs these manifests here (docs/deployment.md says what that leaves).
"""

from __future__ import annotations

import copy
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import kubernetes_validate
import pytest
import yaml

from ferry.proto import grpc_service_pb2_grpc as pb_grpc
from ferry.server.app import QUIET_S, STOP_GRACE_S
from tests.conftest import RunningServer
from tests.deploy.manifests import (
    DEPLOY,
    KSERVE_CRDS,
    KUBERNETES_VERSION,
    OVERLAYS,
    ROOT,
    Resource,
    ferry_container,
    flag,
    kustomize,
    of_kind,
    pod_containers,
    with_component,
)
from tests.integration.test_ferry_stubs import echo_request

EXIT_MARGIN_S = 2.0
"""What a drained server needs past the transport's stop to close its models and exit."""


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Resource]]:
    return request.param, kustomize(DEPLOY / "overlays" / request.param)


def validate(resource: Resource) -> None:
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_every_overlay_passes_strict_validation(overlay: tuple[str, list[Resource]]) -> None:
    _, resources = overlay
    assert of_kind(resources, "Deployment")
    for resource in resources:
        validate(resource)


def test_the_tls_component_renders_and_validates(tmp_path: Path) -> None:
    resources = with_component(tmp_path, "cpu", "tls")
    for resource in resources:
        validate(resource)
    ferry = ferry_container(of_kind(resources, "Deployment")[0])
    assert flag(ferry, "tls-cert") == "/etc/ferry/tls/tls.crt"
    assert flag(ferry, "tls-key") == "/etc/ferry/tls/tls.key"
    # The kubelet's gRPC probe has no TLS: every probe moves to the plaintext metrics port.
    for probe, path in (
        ("startupProbe", "/v2/health/live"),
        ("livenessProbe", "/v2/health/live"),
        ("readinessProbe", "/v2/health/ready"),
    ):
        assert ferry[probe]["httpGet"] == {"port": "metrics", "path": path}
        assert "grpc" not in ferry[probe]
    mounts = {m["name"]: m["mountPath"] for m in ferry["volumeMounts"]}
    assert mounts["tls"] == "/etc/ferry/tls"


def test_the_validator_rejects_an_unknown_field(overlay: tuple[str, list[Resource]]) -> None:
    """The strict check can fail: a misspelt field in a rendered Deployment is caught."""
    deployment = copy.deepcopy(of_kind(overlay[1], "Deployment")[0])
    ferry_container(deployment)["readinesProbe"] = {"grpc": {"port": 8001}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)


def test_monitoring_passes_strict_validation() -> None:
    for resource in kustomize(DEPLOY / "monitoring"):
        validate(resource)


def test_yamllint_finds_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-c", str(ROOT / ".yamllint.yaml"),
         str(DEPLOY)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_sigkill_never_lands_in_the_middle_of_a_drain(
    overlay: tuple[str, list[Resource]],
) -> None:
    (deployment,) = of_kind(overlay[1], "Deployment")
    ferry = ferry_container(deployment)
    drain = flag(ferry, "drain-timeout")
    assert drain is not None, "the drain timeout is set where the grace period can be checked"
    pre_stop = ferry["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    needed = pre_stop + float(drain) + QUIET_S + STOP_GRACE_S + EXIT_MARGIN_S
    assert needed <= grace <= needed + 10, (pre_stop, drain, grace)


def test_selectors_select_the_pods(overlay: tuple[str, list[Resource]]) -> None:
    resources = overlay[1]
    (deployment,) = of_kind(resources, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in of_kind(resources, "Service"):
        assert service["spec"]["selector"].items() <= labels.items()
    for budget in of_kind(resources, "PodDisruptionBudget"):
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for scaler in of_kind(resources, "HorizontalPodAutoscaler"):
        assert scaler["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


def test_probes_ask_the_grpc_health_service_on_the_serving_port(
    overlay: tuple[str, list[Resource]],
) -> None:
    (deployment,) = of_kind(overlay[1], "Deployment")
    ferry = ferry_container(deployment)
    port = int(flag(ferry, "grpc-port") or 0)
    declared = {p["containerPort"] for p in ferry["ports"]}
    assert {port, int(flag(ferry, "http-port") or 0), int(flag(ferry, "metrics-port") or 0)} == (
        declared
    )
    # Liveness must stay SERVING while draining: it asks "live", never readiness ("").
    assert ferry["livenessProbe"]["grpc"] == {"port": port, "service": "live"}
    assert ferry["startupProbe"]["grpc"] == {"port": port, "service": "live"}
    assert ferry["readinessProbe"]["grpc"] == {"port": port}
    # Scraping points at the metrics port the server was told to use.
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == flag(ferry, "metrics-port")


def test_shared_memory_is_a_memory_volume(overlay: tuple[str, list[Resource]]) -> None:
    (deployment,) = of_kind(overlay[1], "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in ferry_container(deployment)["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert flag(ferry_container(deployment), "model-repository") in mounts


def test_every_container_runs_unprivileged(overlay: tuple[str, list[Resource]]) -> None:
    (deployment,) = of_kind(overlay[1], "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    for container in pod_containers(deployment):
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert "memory" in container["resources"]["limits"], container["name"]


def test_the_gpu_overlays_ask_for_their_devices() -> None:
    gpu = ferry_container(of_kind(kustomize(DEPLOY / "overlays" / "gpu"), "Deployment")[0])
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert flag(gpu, "workers") == "gpu"
    mig = ferry_container(of_kind(kustomize(DEPLOY / "overlays" / "mig"), "Deployment")[0])
    limits = mig["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits  # a MIG pod asks for instances, not whole GPUs
    assert limits["nvidia.com/mig-1g.18gb"] == 2
    assert flag(mig, "workers") == "gpu"  # one server process per instance
    cpu = ferry_container(of_kind(kustomize(DEPLOY / "overlays" / "cpu"), "Deployment")[0])
    assert not [k for k in cpu["resources"]["limits"] if k.startswith("nvidia.com/")]


def test_the_sidecar_shares_a_socket_and_shared_memory_with_the_application() -> None:
    resources = kustomize(DEPLOY / "overlays" / "sidecar")
    assert {r["kind"] for r in resources} == {"Deployment"}  # Ferry's Services and HPA go
    (deployment,) = resources
    pod = deployment["spec"]["template"]["spec"]
    ferry = ferry_container(deployment)
    # A native sidecar: an init container that keeps running, after the repository is filled.
    names = [c["name"] for c in pod["initContainers"]]
    assert names == ["model-repository", "ferry"] and ferry["restartPolicy"] == "Always"
    (application,) = pod["containers"]
    socket = flag(ferry, "unix-socket")
    assert socket is not None
    env = {e["name"]: e["value"] for e in application["env"]}
    assert env["FERRY_ADDRESS"] == f"unix://{socket}"

    def volume_at(container: Resource, path: str) -> str:
        (name,) = [m["name"] for m in container["volumeMounts"] if m["mountPath"] == path]
        return str(name)

    folder = str(Path(socket).parent)
    assert volume_at(ferry, folder) == volume_at(application, folder)
    assert volume_at(ferry, "/dev/shm") == volume_at(application, "/dev/shm")


def adapter_rule() -> dict[str, Any]:
    (config_map,) = kustomize(DEPLOY / "monitoring")
    (rule,) = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    return dict(rule)


def test_the_autoscaler_scales_on_the_metric_the_adapter_makes() -> None:
    (scaler,) = of_kind(kustomize(DEPLOY / "overlays" / "cpu"), "HorizontalPodAutoscaler")
    (metric,) = scaler["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == adapter_rule()["name"]["as"]


def test_the_adapter_rule_reads_series_ferry_exports(server: RunningServer) -> None:
    """The rule divides queue time by answered requests: both names must be in a real scrape."""
    rule = adapter_rule()
    with grpc.insecure_channel(server.address) as channel:  # a model's series appear once used
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(echo_request(), timeout=10)
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        scrape = response.read().decode()
    exported = {line.split("{", 1)[0].split(" ", 1)[0] for line in scrape.splitlines()}
    for name in ("nv_inference_queue_duration_us", "nv_inference_request_success"):
        assert name in rule["metricsQuery"] and name in exported
    assert rule["seriesQuery"].startswith("nv_inference_queue_duration_us{")


# ---- KServe ----------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """A CRD's openAPIV3Schema with unknown fields refused, as the API server prunes them."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


def kserve_schema(kind: str, version: str) -> Any:
    if not KSERVE_CRDS.is_dir():
        pytest.skip(f"KServe's CRDs are not at {KSERVE_CRDS}")
    for path in KSERVE_CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
            return _strict(served["schema"]["openAPIV3Schema"])
    raise AssertionError(f"no CRD for {kind}")


def kserve_check(resource: Resource) -> None:
    version = resource["apiVersion"].split("/", 1)[1]
    schema = kserve_schema(resource["kind"], version)
    jsonschema.validate(resource, schema, cls=jsonschema.Draft7Validator)


def test_the_kserve_resources_use_only_fields_kserve_declares() -> None:
    resources = kustomize(DEPLOY / "kserve")
    assert {r["kind"] for r in resources} == {"ClusterServingRuntime", "InferenceService"}
    for resource in resources:
        kserve_check(resource)


def test_the_kserve_check_can_fail() -> None:
    (runtime,) = of_kind(kustomize(DEPLOY / "kserve"), "ClusterServingRuntime")
    broken = copy.deepcopy(runtime)
    broken["spec"]["supportedModelFormat"] = broken["spec"].pop("supportedModelFormats")
    with pytest.raises(jsonschema.ValidationError):
        kserve_check(broken)


def test_the_runtime_and_the_service_agree() -> None:
    resources = kustomize(DEPLOY / "kserve")
    (runtime,) = of_kind(resources, "ClusterServingRuntime")
    (service,) = of_kind(resources, "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert {"onnx", "tensorrt"} <= formats and model["modelFormat"]["name"] in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    (container,) = runtime["spec"]["containers"]
    assert flag(container, "model-repository") == "/mnt/models"  # where KServe puts the model
    assert "v2" in runtime["spec"]["protocolVersions"]
    assert flag(container, "http-port") == "8080"  # where KServe sends REST by default
    port = int(flag(container, "grpc-port") or 0)
    assert [(p["name"], p["containerPort"]) for p in model["ports"]] == [("h2c", port)]
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == flag(
        container, "metrics-port"
    )
