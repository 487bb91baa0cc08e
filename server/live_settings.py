"""Trace and log settings changed while serving (Triton's TraceSetting and LogSettings, over
gRPC and HTTP), taking effect for the next request or log line.

Tracing maps onto Ferry's OpenTelemetry tracing: `trace_level` OFF turns it off (not even a
caller's trace context is followed), TIMESTAMPS or TENSORS turn it on; `trace_rate` N traces
one request in N. Both may be set for one model; an empty value clears a model's own setting.
Logging maps onto Python's logging of the `ferry` loggers: `log_verbose_level` > 0 means DEBUG,
else the most detailed of `log_info`, `log_warning`, `log_error` that is on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from ferry.common.errors import InvalidInput, shown
from ferry.telemetry.tracing import Tracing

FIXED_TRACE = {
    "trace_count": "-1",
    "log_frequency": "0",
    "trace_file": "",
    "trace_mode": "opentelemetry",
}
"""Settings Ferry reports but does not let change: spans go to the OpenTelemetry exporter."""

TRACE_KEYS = ("trace_level", "trace_rate", *FIXED_TRACE)

LOG_KEYS = ("log_file", "log_info", "log_warning", "log_error", "log_verbose_level", "log_format")
LOGGER = logging.getLogger("ferry")


class TraceSettings:
    def __init__(self, tracing: Tracing | None) -> None:
        self._tracing = tracing

    def get(self, model: str = "") -> dict[str, list[str]]:
        tracing = self._tracing
        if tracing is None:
            enabled, ratio = False, 1.0
        else:
            enabled, ratio = tracing.by_model.get(model, (tracing.enabled, tracing.ratio))
        rate = str(round(1 / ratio)) if ratio > 0 else "0"
        return {
            "trace_level": ["TIMESTAMPS"] if enabled else ["OFF"],
            "trace_rate": [rate],
            **{key: [value] for key, value in FIXED_TRACE.items()},
        }

    def update(self, model: str, changes: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
        """Apply `changes` (key -> values; no values: back to the default) for one model or
        ("") for all; the settings in force afterwards."""
        unknown = [k for k in changes if k not in TRACE_KEYS]
        if unknown:
            raise InvalidInput(f"unknown trace setting(s) {unknown} (known: {list(TRACE_KEYS)})")
        fixed = [
            k
            for k, v in changes.items()
            if k in FIXED_TRACE and list(v) not in ([], [FIXED_TRACE[k]])
        ]
        if fixed:
            raise InvalidInput(
                f"trace setting(s) {fixed} cannot be changed: Ferry sends spans to its "
                "OpenTelemetry exporter (--tracing, OTEL_* variables)"
            )
        tracing = self._tracing
        wanted = {k: list(v) for k, v in changes.items() if k in ("trace_level", "trace_rate")}
        if not wanted:
            return self.get(model)
        if tracing is None:
            raise InvalidInput(
                "tracing is off in this server: start it with --tracing otlp or console to "
                "change trace settings"
            )
        if model and all(not v for v in wanted.values()):
            tracing.by_model.pop(model, None)  # back to the server's settings
            return self.get(model)
        enabled, ratio = (
            tracing.by_model.get(model, (tracing.enabled, tracing.ratio))
            if model
            else (
                tracing.enabled,
                tracing.ratio,
            )
        )
        level = wanted.get("trace_level")
        if level:
            if level == ["OFF"]:
                enabled = False
            elif set(level) <= {"TIMESTAMPS", "TENSORS"}:
                enabled = True
            else:
                raise InvalidInput(f"trace_level {level}: OFF, or TIMESTAMPS and/or TENSORS")
        rate = wanted.get("trace_rate")
        if rate:
            try:
                every = int(rate[0])
            except ValueError:
                every = -1
            if len(rate) != 1 or every < 1:
                raise InvalidInput(f"trace_rate {rate}: one integer >= 1 (trace one in N)")
            ratio = 1 / every
        if model:
            tracing.by_model[model] = (enabled, ratio)
        else:
            tracing.enabled, tracing.ratio = enabled, ratio
        return self.get(model)


class LogSettings:
    def get(self) -> dict[str, bool | int | str]:
        level = LOGGER.getEffectiveLevel()
        return {
            "log_file": "",
            "log_info": level <= logging.INFO,
            "log_warning": level <= logging.WARNING,
            "log_error": level <= logging.ERROR,
            "log_verbose_level": 1 if level <= logging.DEBUG else 0,
            "log_format": "default",
        }

    def update(self, changes: Mapping[str, bool | int | str]) -> dict[str, bool | int | str]:
        unknown = [k for k in changes if k not in LOG_KEYS]
        if unknown:
            raise InvalidInput(f"unknown log setting(s) {unknown} (known: {list(LOG_KEYS)})")
        if changes.get("log_file", "") != "":
            raise InvalidInput("log_file cannot be set: Ferry logs to standard error")
        if changes.get("log_format", "default") != "default":
            raise InvalidInput(f"log_format '{shown(str(changes['log_format']))}': only 'default'")
        current = self.get()
        merged = {**current, **changes}
        for key in ("log_info", "log_warning", "log_error"):
            if not isinstance(merged[key], bool):
                raise InvalidInput(f"{key} must be true or false")
        verbose = merged["log_verbose_level"]
        if isinstance(verbose, bool) or not isinstance(verbose, int) or verbose < 0:
            raise InvalidInput("log_verbose_level must be an integer >= 0")
        if verbose > 0:
            level = logging.DEBUG
        elif merged["log_info"]:
            level = logging.INFO
        elif merged["log_warning"]:
            level = logging.WARNING
        elif merged["log_error"]:
            level = logging.ERROR
        else:
            level = logging.CRITICAL
        LOGGER.setLevel(level)
        return self.get()
