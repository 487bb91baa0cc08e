"""Tracing configuration from OTEL_* variables and flags: what is read, and what is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ferry.telemetry.tracing import TracingConfig

ROOT = Path(__file__).resolve().parents[3]


def test_standard_variables_are_read_and_flags_win() -> None:
    environ = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    config = TracingConfig.from_env(environ)
    assert (config.exporter, config.ratio, config.protocol) == ("otlp", 0.25, "http/protobuf")
    assert TracingConfig.from_env(environ, "console", 1.0).exporter == "console"
    assert not TracingConfig.from_env({}).enabled


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "tracing exporter must be one of"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER_ARG": "2"}, "ratio must be in 0..1"),
        ({"OTEL_TRACES_SAMPLER_ARG": "half"}, "could not convert"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"}, "grpc or http/protobuf"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TracingConfig.from_env(environ)


def test_the_server_refuses_to_start_on_bad_settings(tmp_path: Path) -> None:
    answer = subprocess.run(
        [
            sys.executable,
            "-m",
            "ferry",
            "serve",
            "--model-repository",
            str(tmp_path),
            "--trace-ratio",
            "7",
            "--access-log-sample",
            "0.5",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert answer.returncode == 2 and "ratio must be in 0..1" in answer.stderr
