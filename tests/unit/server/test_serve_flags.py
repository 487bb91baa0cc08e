"""`ferry serve` refuses out-of-range latency-budget, capture and GIL switch interval flags before
it starts, saying which flag and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferry.server import cli


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--slo-p99-ms", "0"], "slo_p99_ms must be > 0, got 0.0"),
        (["--slo-p99-ms", "-3"], "slo_p99_ms must be > 0, got -3.0"),
        (["--capture", "c", "--capture-sample", "2"], "capture sample must be in (0, 1], got 2.0"),
        (["--capture", "c", "--capture-max-bytes", "0"], "capture max bytes must be >= 1, got 0"),
        (["--gil-switch-us", "0"], "--gil-switch-us takes 1 to 1000000"),
        (["--gil-switch-us", "1000001"], "--gil-switch-us takes 1 to 1000000"),
    ],
)
def test_out_of_range_flags_are_refused(
    tmp_path: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", "--model-repository", str(tmp_path), *flags]) == 2
    assert message in capsys.readouterr().err
