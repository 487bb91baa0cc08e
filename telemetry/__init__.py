"""Observability: OpenTelemetry traces (tracing.py), Prometheus metrics (metrics.py, gpu.py)
and the access log (access_log.py).

The server owns one of each it is configured for; absent parts cost nothing. The scheduler
reports batches through scheduler.observer and never imports from here. Submodules are imported
by name (nothing is pulled in here), so the GPU metrics work without the tracing libraries.
"""
