"""The HTTP listener: aiohttp on the server's event loop, plaintext or TLS.

TLS uses the gRPC listener's files (server/tls.py) and, like it, picks up rotated certificates
without a restart: each handshake's SNI callback (which runs for every TLS client, with or
without a server name) swaps in a context freshly loaded when `TlsConfig.stamp` (the files'
modification times and sizes) changed; a rotation caught half-written keeps the current one.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

from aiohttp import web

from ferry.server.tls import TlsConfig

log = logging.getLogger("ferry.server")

SHUTDOWN_GRACE_S = 1.0
"""What answers still being written get when the listener stops (after the drain)."""


def _context(config: TlsConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.cert, config.key)
    if config.client_ca is not None:
        context.load_verify_locations(config.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _RotatingContext:
    """The listener's context; its SNI callback moves each new connection onto the newest
    certificates."""

    def __init__(self, config: TlsConfig) -> None:
        self._config = config
        self._seen = config.stamp()
        self._current = _context(config)
        self.listener = _context(config)
        self.listener.sni_callback = self._choose

    def _choose(self, connection: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        try:
            stamp = self._config.stamp()
            if stamp != self._seen:
                self._current = _context(self._config)
                self._seen = stamp
                log.info("TLS (HTTP): certificate files changed; new connections use them")
        except (OSError, ssl.SSLError) as exc:  # a rotation half done: keep the current one
            log.warning("TLS (HTTP): cannot load the certificate files yet (%s)", exc)
        connection.context = self._current


@dataclass
class HttpListener:
    """A started listener: `port` is the bound TCP port."""

    runner: web.AppRunner
    port: int

    async def stop(self) -> None:
        await self.runner.cleanup()


async def listen(
    app: web.Application, host: str, port: int, tls: TlsConfig | None, reuse_port: bool
) -> HttpListener:
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S
    )
    await runner.setup()
    context = None if tls is None else _RotatingContext(tls).listener
    site = web.TCPSite(
        runner, host, port, ssl_context=context, reuse_port=reuse_port or None, backlog=1024
    )
    await site.start()
    bound = runner.addresses[0]
    return HttpListener(runner, int(bound[1]))
