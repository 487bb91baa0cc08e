"""An installed Ferry puts one package, `ferry`, into site-packages, and its console script.

Generic top-level names (`server`, `common`, `proto`, ...) would clash with any other project
installed beside Ferry; the source tree keeps those folders, linked under ferry/.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


PACKAGE = ("ferry", "server", "scheduler", "engines", "common", "proto", "loadtest", "telemetry")


def _wheel(out: Path) -> Path:
    """Build from a copy of the sources, so that no stale build/ folder can leak into it."""
    source = out.parent / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in PACKAGE:
        shutil.copytree(
            ROOT / name,
            source / name,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("ferry-*.whl")
    return wheel


def test_the_wheel_holds_only_the_ferry_package(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "dist")
    tops = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"ferry"}
    names = set(zipfile.ZipFile(wheel).namelist())
    # The linked folders arrive as real files, each where its import name says.
    for module in ("scheduler/batcher.py", "server/cli.py", "engines/base.py", "proto/py.typed"):
        assert f"ferry/{module}" in names


def test_installed_into_a_fresh_venv_only_ferry_and_its_script_appear(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "dist")
    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    before = set(site.iterdir()) if site.exists() else set()
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         str(wheel)],
        check=True,
        capture_output=True,
    )
    added = {p.name for p in set(site.iterdir()) - before if p.name != "__pycache__"}
    assert {a for a in added if not a.endswith(".dist-info")} == {"ferry"}
    assert (env / "bin" / "ferry").exists()
    # `ferry` itself imports with the standard library alone (its version from the metadata).
    version = subprocess.run(
        [str(python), "-c", "import ferry; print(ferry.__version__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout.strip()
    assert version == _project_version()
    assert sysconfig.get_paths()["purelib"] != str(site)  # really another environment


def _project_version() -> str:
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise AssertionError("pyproject.toml has no version")
