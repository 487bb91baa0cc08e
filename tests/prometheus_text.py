"""The samples of a /metrics text with their names as the lines write them.

prometheus-client's parser renames a counter's samples to end in `_total` (OpenMetrics' rule)
when its TYPE line names the counter as Triton does; Prometheus keeps the names as written, and
so do the tests."""

from __future__ import annotations

import re

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def samples(text: str) -> Samples:
    """(name, labels sorted by name) -> value, for every sample line of `text`."""
    found: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            raise ValueError(f"not a sample line: {line!r}")
        name, inside, value = match.groups()
        labels = tuple(
            sorted(
                (label, re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group(0)], raw))
                for label, raw in _LABEL.findall(inside or "")
            )
        )
        found[(name, labels)] = float(value)
    return found
