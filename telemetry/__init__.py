"""Observability: OpenTelemetry traces, Prometheus metrics and the access log.

The server owns one `Telemetry`; each part is optional and absent parts cost nothing. The
scheduler reports batches through scheduler.observer, never importing from here.
"""

from telemetry.access_log import AccessLog
from telemetry.metrics import Metrics
from telemetry.tracing import Tracing, TracingConfig, make_provider

__all__ = ["AccessLog", "Metrics", "Tracing", "TracingConfig", "make_provider"]
