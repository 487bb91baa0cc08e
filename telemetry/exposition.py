"""Prometheus' text format (0.0.4), written from label prefixes made once.

Why not prometheus-client's writer for Ferry's own families: it writes every line anew, checking
and escaping each label, and a scrape runs in Python on the metrics thread, holding the GIL, and
with it the event loop, for as long as it writes (bench/metrics_scrape.py). A family's lines
differ from one scrape to the next only in their numbers: `Exposition` keeps each line's text up
to the value, and a scrape writes the numbers.

Counters keep their names as written, with no `_total` appended to the family's name in its HELP
and TYPE lines (prometheus-client's writer appends one to every counter, so its TYPE lines named
`nv_inference_request_success_total` while the samples were `nv_inference_request_success`):
Triton writes its counters' TYPE lines under the samples' own names, and so does Ferry.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Labels = tuple[tuple[str, str], ...]

CACHED_LINES = 50_000
"""Lines whose prefixes are kept; past it the cache starts over (label sets of models long
unloaded must not accumulate for good)."""


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family at one scrape: name, help, type ("counter", "gauge") and its samples
    (sample name, labels, value). A counter's samples carry its name as Ferry writes it."""

    name: str
    documentation: str
    kind: str
    samples: Sequence[tuple[str, Labels, float]]


class Exposition:
    """Writes families; scrape threads share one (setting a key of its cache is atomic under
    the GIL, and two threads that make the same prefix make the same text)."""

    def __init__(self) -> None:
        self._prefixes: dict[tuple[str, Labels], str] = {}

    def write(self, families: Iterable[Family]) -> str:
        out: list[str] = []
        prefixes = self._prefixes
        if len(prefixes) > CACHED_LINES:
            prefixes.clear()
        for family in families:
            out.append(f"# HELP {family.name} {escape_help(family.documentation)}\n")
            out.append(f"# TYPE {family.name} {family.kind}\n")
            for name, labels, value in family.samples:
                prefix = prefixes.get((name, labels))
                if prefix is None:
                    prefix = prefixes[(name, labels)] = sample_prefix(name, labels)
                out.append(f"{prefix}{number(value)}\n")
        return "".join(out)


def sample_prefix(name: str, labels: Labels) -> str:
    """A sample's line up to its value: `name{label="value",...} `, labels in name order (as
    Triton and prometheus-client write them)."""
    if not labels:
        return f"{name} "
    inside = ",".join(f'{label}="{escape_label(value)}"' for label, value in sorted(labels))
    return f"{name}{{{inside}}} "


def number(value: float) -> str:
    """A sample's value as Prometheus reads it (Go's float syntax takes Python's repr)."""
    if math.isfinite(value):
        return repr(float(value))
    if math.isnan(value):
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
