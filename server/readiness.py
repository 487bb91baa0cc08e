"""Whether the server takes traffic: what ServerReady, the health service's readiness and the
HTTP ready path all answer."""

from __future__ import annotations

from ferry.server.admission import Admission
from ferry.server.repository import READY, ModelRepository


class ReadinessState:
    """Ready after loading (under strict readiness, only while every model is READY), not
    ready while draining."""

    def __init__(
        self, repository: ModelRepository, strict: bool, admission: Admission | None = None
    ) -> None:
        self._repository = repository
        self._strict = strict
        self._admission = admission or Admission()
        self.started = False

    @property
    def draining(self) -> bool:
        """The server's admission refuses new requests (server/admission.py)."""
        return self._admission.draining

    @property
    def ready(self) -> bool:
        if not self.started or self.draining:
            return False
        entries = self._repository.entries()
        if self._strict:  # every model meant to serve does (not those left unloaded on purpose)
            return all(e.state == READY for e in entries if e.requested)
        return True
