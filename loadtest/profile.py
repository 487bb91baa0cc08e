"""Rate profiles for the open loop: load that changes while the run goes on.

    step:300@10,900@10,300@10   300 requests/s for 10 s, then 900 for 10 s, then 300 for 10 s
    ramp:100-1000@20            from 100 to 1000 requests/s, linearly, over 20 s

Segments of either kind may follow each other (`step:...` and `ramp:...` name the kind of every
segment in the list). Arrivals are Poisson at the rate of the moment: drawn at the profile's
highest rate and each kept with probability rate(t) / highest (thinning), which is exact for
any rate shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class ProfileError(ValueError):
    pass


@dataclass(frozen=True)
class Segment:
    start_rate: float
    end_rate: float
    seconds: float


@dataclass(frozen=True)
class RateProfile:
    segments: tuple[Segment, ...]

    @classmethod
    def parse(cls, text: str) -> RateProfile:
        kind, sep, body = text.partition(":")
        if not sep or kind not in ("step", "ramp") or not body:
            raise ProfileError(
                f"--rate-profile {text!r}: give step:RATE@SECONDS,... or ramp:FROM-TO@SECONDS,..."
            )
        segments = []
        for part in body.split(","):
            rates, at, seconds = part.partition("@")
            try:
                if not at:
                    raise ValueError("no @SECONDS")
                duration = float(seconds)
                if kind == "step":
                    start = end = float(rates)
                else:
                    low, dash, high = rates.partition("-")
                    if not dash:
                        raise ValueError("a ramp goes FROM-TO")
                    start, end = float(low), float(high)
            except ValueError as exc:
                raise ProfileError(f"--rate-profile segment {part!r}: {exc}") from None
            if duration <= 0 or start < 0 or end < 0 or max(start, end) == 0:
                raise ProfileError(
                    f"--rate-profile segment {part!r}: rates >= 0 (not both 0), seconds > 0"
                )
            segments.append(Segment(start, end, duration))
        return cls(tuple(segments))

    def scaled(self, factor: float) -> RateProfile:
        """Every rate times `factor` (one client process's share)."""
        return RateProfile(
            tuple(
                Segment(s.start_rate * factor, s.end_rate * factor, s.seconds)
                for s in self.segments
            )
        )

    @property
    def duration_s(self) -> float:
        return sum(s.seconds for s in self.segments)

    @property
    def peak(self) -> float:
        return max(max(s.start_rate, s.end_rate) for s in self.segments)

    def rate_at(self, t: float | np.ndarray) -> np.ndarray:
        """Requests/s at `t` seconds into the profile (0 outside it)."""
        t = np.asarray(t, dtype=np.float64)
        rate = np.zeros_like(t)
        begin = 0.0
        for s in self.segments:
            inside = (t >= begin) & (t < begin + s.seconds)
            share = (t - begin) / s.seconds
            rate = np.where(inside, s.start_rate + (s.end_rate - s.start_rate) * share, rate)
            begin += s.seconds
        return rate

    def arrivals(self, rng: np.random.Generator) -> np.ndarray:
        """Poisson arrival times in [0, duration) following the profile."""
        peak = self.peak
        count = int(peak * self.duration_s * 1.2) + 16
        times = np.cumsum(rng.exponential(1.0 / peak, count))
        while times[-1] < self.duration_s:
            times = np.concatenate([times, times[-1] + np.cumsum(rng.exponential(1 / peak, count))])
        times = times[times < self.duration_s]
        keep = rng.random(len(times)) < self.rate_at(times) / peak
        return times[keep]
