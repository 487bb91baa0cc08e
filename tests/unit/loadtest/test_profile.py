"""Rate profiles (loadtest/profile.py) and the per-second timeline of a run (loadtest/report.py)."""

from __future__ import annotations

import numpy as np
import pytest

from ferry.loadtest.profile import ProfileError, RateProfile, Segment
from ferry.loadtest.report import timeline


def test_steps_and_ramps_parse_into_segments() -> None:
    assert RateProfile.parse("step:300@10,900@5").segments == (
        Segment(300, 300, 10),
        Segment(900, 900, 5),
    )
    ramp = RateProfile.parse("ramp:100-1000@20")
    assert ramp.segments == (Segment(100, 1000, 20),) and ramp.duration_s == 20
    assert ramp.rate_at(10.0) == pytest.approx(550)
    assert ramp.scaled(0.5).segments == (Segment(50, 500, 20),)


@pytest.mark.parametrize(
    "text",
    ["300@10", "step:", "step:300", "step:abc@1", "ramp:100@10", "step:300@0", "step:0@5", "x:1@1"],
)
def test_a_profile_that_cannot_be_read_is_refused(text: str) -> None:
    with pytest.raises(ProfileError, match="--rate-profile"):
        RateProfile.parse(text)


def test_arrivals_follow_the_rate_of_each_moment() -> None:
    profile = RateProfile.parse("step:200@5,1000@5")
    times = profile.arrivals(np.random.default_rng(1))
    assert times.min() >= 0 and times.max() < 10 and np.all(np.diff(times) >= 0)
    assert (times < 5).sum() == pytest.approx(1000, rel=0.1)
    assert (times >= 5).sum() == pytest.approx(5000, rel=0.05)
    ramp = RateProfile.parse("ramp:0-1000@10").arrivals(np.random.default_rng(2))
    assert (ramp < 5).sum() == pytest.approx(1250, rel=0.1)  # the ramp's first half: a quarter


def test_the_timeline_gives_each_second_its_sends_p99_and_goodput() -> None:
    events = [(0.1 * i, 0.002, True) for i in range(10)]  # second 0..1: fast
    events += [(1.0 + 0.1 * i, 0.050, True) for i in range(10)]  # second 1..2: slow
    events += [(1.5, 0.0, False)]  # a refusal
    rows = timeline(events, 2.0, budget_s=0.010)
    first, last = rows[0], rows[-1]
    assert first == {
        "t": 1.0,
        "sent": 10,
        "answered": 10,
        "p99_ms": pytest.approx(2.0),
        "within_budget": 10,
    }
    assert last["t"] == 2.0 and last["sent"] == 11 and last["answered"] == 10
    assert last["p99_ms"] == pytest.approx(50.0) and last["within_budget"] == 0
    assert [r["t"] for r in rows] == [1.0, 1.25, 1.5, 1.75, 2.0]
