"""The metrics port: `/metrics` (and `/`) in Prometheus' text format, Triton's health paths,
404 for any other path.

prometheus-client's own server answers every path with the metrics, so an HTTP probe pointed at
a wrong path of this port would always pass. This one answers only where the metrics are.

`/v2/health/live` and `/v2/health/ready` (Triton's paths: 200 or 400) are here for HTTP probes
that cannot speak gRPC through TLS: a kubelet's gRPC probe has no TLS, so when the gRPC port
serves TLS, Kubernetes probes this plaintext port instead (deploy/components/tls).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

PATHS = ("/metrics", "/")
LIVE_PATH = "/v2/health/live"
READY_PATH = "/v2/health/ready"

Probe = Callable[[], bool]
"""Answers from the endpoint's thread, so it may only read plain attributes."""


class MetricsEndpoint:
    """Serves the metrics (`render`: the text to answer, made at each scrape) and the health
    probes from a daemon thread until `stop`."""

    def __init__(
        self,
        render: Callable[[], bytes],
        host: str,
        port: int,
        ready: Probe | None = None,
    ) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in (LIVE_PATH, READY_PATH):
                    ok = path == LIVE_PATH or ready is None or ready()
                    # Triton answers 200 or 400 with an empty body.
                    self._answer(200 if ok else 400, b"", "text/plain")
                    return
                if path not in PATHS:
                    self._answer(404, b"not found: metrics are at /metrics\n", "text/plain")
                    return
                self._answer(200, render(), CONTENT_TYPE_LATEST)

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None  # scrapes are not news

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ferry-metrics", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
