"""TLS and mutual TLS for the gRPC listener, with certificates reloaded when their files change.

cert-manager and similar tools rotate a certificate by rewriting its files in place (a mounted
Secret). gRPC asks `_Certificates.fetch` for the certificate configuration at every new
handshake; it answers a new configuration when a file's modification time or size changed, and
None (keep the current one) otherwise, so connections made after a rotation use the new
certificate without a restart, and open connections keep theirs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger("ferry.server")


@dataclass(frozen=True)
class TlsConfig:
    """cert, key: the server's certificate chain and private key (PEM). client_ca: when set,
    clients must present a certificate signed by it (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def files(self) -> tuple[Path, ...]:
        extra = () if self.client_ca is None else (self.client_ca,)
        return (self.cert, self.key, *extra)

    def stamp(self) -> tuple[tuple[int, int], ...]:
        """Each file's modification time and size: what changes when a certificate rotates."""
        return tuple(
            (status.st_mtime_ns, status.st_size)
            for status in (os.stat(path) for path in self.files())
        )


class _Certificates:
    def __init__(self, config: TlsConfig) -> None:
        self._config = config
        self._seen = config.stamp()
        self.initial = self._configuration()

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        config = self._config
        return grpc.ssl_server_certificate_configuration(
            [(config.key.read_bytes(), config.cert.read_bytes())],
            root_certificates=None if config.client_ca is None else config.client_ca.read_bytes(),
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC at each new handshake; must not raise (a failed read keeps the old)."""
        try:
            stamp = self._config.stamp()
            if stamp == self._seen:
                return None
            fresh = self._configuration()
        except OSError as exc:  # a rotation half done: keep serving the current certificate
            log.warning("TLS: cannot read the certificate files yet (%s); keeping the old", exc)
            return None
        self._seen = stamp
        log.info("TLS: certificate files changed; new connections use the new certificate")
        return fresh


def server_credentials(config: TlsConfig) -> grpc.ServerCredentials:
    """Credentials for `add_secure_port`; a missing or unreadable file fails here, at start."""
    for path in config.files():
        if not path.is_file():
            raise ValueError(f"TLS file {path} does not exist or is not a file")
    certificates = _Certificates(config)
    return grpc.dynamic_ssl_server_credentials(
        certificates.initial,
        certificates.fetch,
        require_client_authentication=config.client_ca is not None,
    )
