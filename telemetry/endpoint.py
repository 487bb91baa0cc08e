"""The metrics port: `/metrics` (and `/`) in Prometheus' text format, 404 for any other path.

prometheus-client's own server answers every path with the metrics, so an HTTP probe pointed at
a wrong path of this port would always pass. This one answers only where the metrics are.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

PATHS = ("/metrics", "/")


class MetricsEndpoint:
    """Serves one registry from a daemon thread until `stop`."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path not in PATHS:
                    self._answer(404, b"not found: metrics are at /metrics\n", "text/plain")
                    return
                self._answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)

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
