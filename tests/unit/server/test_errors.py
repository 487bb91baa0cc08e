"""Errors become statuses in one place, purely; a bug is logged once, where it is answered, and
its traceback never reaches the caller."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest

from ferry.common.errors import EngineError, ModelNotReady, QueueFull
from ferry.proto import grpc_service_pb2 as pb
from ferry.server.errors import to_status
from ferry.server.servicer import InferenceServicer


class Aborted(Exception):
    pass


class Context:
    """What a handler uses of grpc.aio.ServicerContext."""

    def __init__(self) -> None:
        self.status: tuple[grpc.StatusCode, str] | None = None

    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> tuple[()]:
        return ()

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.status = (code, message)
        raise Aborted


class BrokenRepository:
    """A repository with a bug: every lookup raises something outside Ferry's family."""

    def get(self, name: str, version: str = "") -> Any:
        raise KeyError("secret-internal-detail")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (QueueFull("Exceeds maximum queue size"), grpc.StatusCode.UNAVAILABLE),
        (ModelNotReady("not ready"), grpc.StatusCode.UNAVAILABLE),
        (EngineError("failed"), grpc.StatusCode.INTERNAL),
        (RuntimeError("bug"), grpc.StatusCode.INTERNAL),
    ],
)
def test_to_status_maps_without_logging(
    error: Exception, code: grpc.StatusCode, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        assert to_status(error)[0] == code
        to_status(error)
    assert caplog.records == []


@pytest.mark.asyncio
async def test_an_internal_error_is_logged_once_and_hidden_from_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    servicer = InferenceServicer(BrokenRepository(), readiness=None)  # type: ignore[arg-type]
    context = Context()
    with caplog.at_level(logging.DEBUG), pytest.raises(Aborted):
        await servicer.ModelInfer(pb.ModelInferRequest(model_name="m"), context)  # type: ignore[arg-type]
    assert context.status == (grpc.StatusCode.INTERNAL, "internal error (see the server log)")
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1 and isinstance(logged[0].exc_info[1], KeyError)  # type: ignore[index]
