"""The real TensorRT runtime on the GPU machine (marker `gpu`): TensorRT cannot be installed
on the CI machines, and only its lean runtime (`tensorrt_lean`, deserialize and execute, no
builder) can be installed here, so no plan can be built: these tests load the runtime through
Ferry's backend and check that plans it cannot run are refused with TensorRT's own reason,
while the server keeps serving everything else."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferry.common.errors import ModelLoadError
from ferry.engines.cuda.devices import discover
from ferry.engines.tensorrt.engine import TensorRTEngine
from ferry.engines.tensorrt.runtime import import_tensorrt
from ferry.server.example_repo import write_example_repo
from tests.conftest import start_server, stop_server
from tests.doubles.tensorrt_api import write_plan

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def runtime() -> object:
    found = discover()
    if not found.devices:
        pytest.skip(f"no GPU: {found.reason}")
    try:
        return import_tensorrt()
    except ModelLoadError as exc:
        pytest.skip(str(exc))


def refusal(path: Path) -> str:
    with pytest.raises(ModelLoadError) as info:
        TensorRTEngine(path, [0])
    return str(info.value)


def test_the_runtime_is_the_real_one(runtime: object) -> None:
    name = getattr(runtime, "__name__", "")
    assert name in ("tensorrt", "tensorrt_lean")
    assert getattr(runtime, "__version__", "").startswith(("10.", "11."))


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 64, b"ftrt" + bytes(range(256)) * 8],
    ids=["empty", "zeros", "garbage"],
)
def test_an_unreadable_plan_is_refused_with_tensorrts_reason(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "model.plan"
    path.write_bytes(content)
    message = refusal(path)
    assert "cannot deserialize this plan" in message and str(path) in message
    assert "TensorRT gave no reason" not in message  # TensorRT's logged error is in it


def test_a_plan_of_another_engine_is_refused(tmp_path: Path) -> None:
    # Well-formed for the CI double, nothing TensorRT knows.
    path = write_plan(
        tmp_path / "model.plan",
        "affine",
        [{"name": "x", "mode": "INPUT", "dtype": "FLOAT", "shape": [-1, 4]}],
        [{"x": [[1, 4], [8, 4], [16, 4]]}],
    )
    assert "cannot deserialize this plan" in refusal(path)


def test_the_server_reports_a_bad_plan_and_serves_the_rest(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_example_repo(repo)
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.plan").write_bytes(b"\x00not a plan" * 100)
    (repo / "broken" / "config.pbtxt").write_text(
        'platform: "tensorrt_plan"\nmax_batch_size: 8\n'
        "instance_group { kind: KIND_GPU }\noptimization { cuda { graphs: true } }\n"
    )
    server = start_server(repo, tmp_path)
    try:
        log = server.log()
        assert "model broken failed to load" in log and "cannot deserialize this plan" in log
        assert "model dlrm version 1 ready" in log
    finally:
        stop_server(server)
