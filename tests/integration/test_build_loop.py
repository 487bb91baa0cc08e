"""The build loop with real parts: a server captures real request inputs, `ferry build` turns
them into an INT8 version's calibration, and a server serving that version names how it was
made (ModelConfig parameters over gRPC and HTTP, the artifact digest in every answer, the
manifest digest in the access log)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as tc
import tritonclient.http as th

from tests.conftest import ROOT, start_server, stop_server


def dlrm_inputs(rows: int, seed: int) -> list[tc.InferInput]:
    rng = np.random.default_rng(seed)
    dense = tc.InferInput("dense", [rows, 13], "FP32")
    dense.set_data_from_numpy(rng.standard_normal((rows, 13)).astype(np.float32))
    sparse = tc.InferInput("sparse", [rows, 26], "INT64")
    sparse.set_data_from_numpy(rng.integers(0, 10**6, (rows, 26)).astype(np.int64))
    return [dense, sparse]


def ferry_build(
    source: Path, repository: Path, name: str, *options: str
) -> subprocess.CompletedProcess[str]:
    """`ferry build` as a user runs it: its own process."""
    command = [sys.executable, "-m", "ferry", "build", str(source), "--repository",
               str(repository), "--name", name, *options]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def access_entry(log: Path, request_id: str) -> dict[str, str]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            if entry["id"] == request_id:
                return entry  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"no access log line for {request_id}")


def test_captured_traffic_calibrates_a_build_whose_answers_lead_to_its_manifest(
    model_repo: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(model_repo / "dlrm", repo / "dlrm")
    captured = tmp_path / "captured"
    work = tmp_path / "capture-server"
    work.mkdir()
    server = start_server(repo, work, "--capture", str(captured), "--capture-sample", "1")
    try:
        client = tc.InferenceServerClient(server.address)
        for seed in range(12):
            client.infer("dlrm", dlrm_inputs(16, seed))
    finally:
        stop_server(server)  # the writer finishes what was sampled
    files = sorted((captured / "dlrm").glob("*.npz"))
    assert len(files) == 12
    with np.load(files[0]) as first:
        assert first["dense"].shape == (16, 13) and first["sparse"].dtype == np.int64

    built = tmp_path / "built"
    done = ferry_build(
        repo / "dlrm" / "1" / "model.onnx",
        built,
        "dlrm_int8",
        "--precision",
        "int8",
        "--calibration",
        str(captured / "dlrm"),
        "--max-error",
        "0.05",
        "--batch-sizes",
        "16",
        "--speed-seconds",
        "0.1",
    )
    assert done.returncode == 0, done.stderr
    assert "built " in done.stdout and "ratio" in done.stdout
    manifest_path = built / "dlrm_int8" / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["calibration"]["source"] == str(captured / "dlrm")
    assert manifest["calibration"]["rows"] + manifest["held_out_rows"] == 12 * 16

    work = tmp_path / "serve-built"
    work.mkdir()
    server = start_server(built, work)
    try:
        client = tc.InferenceServerClient(server.address)
        answer = client.infer("dlrm_int8", dlrm_inputs(4, 99), request_id="built-1")
        digest = answer.get_response().parameters["model_sha256"].string_param
        assert digest == manifest["artifact_sha256"]
        parameters = client.get_model_config("dlrm_int8").config.parameters
        manifest_digest = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
        assert parameters["ferry.build.manifest_sha256"].string_value == manifest_digest
        assert parameters["ferry.build.precision"].string_value == "int8"
        assert parameters["ferry.build.source_sha256"].string_value == manifest["source_sha256"]
        http = th.InferenceServerClient(server.http_url.removeprefix("http://"))
        shown = http.get_model_config("dlrm_int8")["parameters"]
        assert shown["ferry.build.manifest_sha256"]["string_value"] == manifest_digest
        entry = access_entry(work / "access.log", "built-1")
        assert entry["manifest_sha256"] == manifest_digest and entry["sha256"] == digest
    finally:
        stop_server(server)


def test_a_failed_build_exits_2_saying_why_and_writes_nothing(
    model_repo: Path, tmp_path: Path
) -> None:
    done = ferry_build(
        model_repo / "dlrm" / "1" / "model.onnx", tmp_path / "built", "x", "--precision", "int8"
    )
    assert done.returncode == 2
    assert "ferry build: --precision int8 needs --calibration" in done.stderr
    assert not (tmp_path / "built").exists()


def test_a_config_copied_from_model_config_loads_and_cannot_claim_a_build(
    model_repo: Path, tmp_path: Path
) -> None:
    """ModelConfig shows `ferry.build.*`; a config copied from it loads again (they are dropped
    and set anew from the manifest), and a version without a manifest cannot claim one."""
    repo = tmp_path / "repo"
    shutil.copytree(model_repo / "dlrm", repo / "dlrm")
    rng = np.random.default_rng(3)
    data = tmp_path / "calibration.npz"
    np.savez(
        data,
        dense=rng.standard_normal((300, 13)).astype(np.float32),
        sparse=rng.integers(0, 1000, (300, 26)).astype(np.int64),
    )
    done = ferry_build(
        repo / "dlrm" / "1" / "model.onnx",
        repo,
        "dlrm_int8",
        "--precision",
        "int8",
        "--calibration",
        str(data),
        "--batch-sizes",
        "16",
        "--speed-seconds",
        "0.1",
    )
    assert done.returncode == 0, done.stderr
    server = start_server(repo, tmp_path, "--model-control-mode", "explicit", "--load-model", "*")
    try:
        http = th.InferenceServerClient(server.http_url.removeprefix("http://"))
        built = http.get_model_config("dlrm_int8")
        assert built["parameters"]["ferry.build.precision"]["string_value"] == "int8"
        http.load_model("dlrm_int8", config=json.dumps(built))
        again = http.get_model_config("dlrm_int8")["parameters"]
        assert (
            again["ferry.build.manifest_sha256"]
            == built["parameters"]["ferry.build.manifest_sha256"]
        )
        plain = http.get_model_config("dlrm")
        plain.setdefault("parameters", {})["ferry.build.precision"] = {"string_value": "int8"}
        http.load_model("dlrm", config=json.dumps(plain))
        shown = http.get_model_config("dlrm").get("parameters", {})
        assert not any(key.startswith("ferry.build.") for key in shown)
    finally:
        stop_server(server)
