"""The one place where Ferry's errors become gRPC status codes.

Lookup walks the exception's MRO, so a subclass inherits its parent's code unless it has its
own row. Anything outside the FerryError family is a bug: the caller gets INTERNAL with a generic
message, and the front end that answers it logs the traceback once (`log_if_unexpected`), never
sending it to the client. `to_status` itself is pure: telemetry may ask it again for the same
error without logging twice.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from ferry.common.errors import (
    AlreadyExists,
    DeadlineExceeded,
    EngineError,
    FerryError,
    InvalidInput,
    LimitExceeded,
    ModelLoadError,
    ModelNotFound,
    Unavailable,
    Unsupported,
    shown,
)

log = logging.getLogger("ferry.server")

STATUS: dict[type[FerryError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    Unsupported: grpc.StatusCode.UNIMPLEMENTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    EngineError: grpc.StatusCode.INTERNAL,
    ModelLoadError: grpc.StatusCode.INTERNAL,
    FerryError: grpc.StatusCode.INTERNAL,
}


MAX_MESSAGE_CHARS = 1024
"""The longest message a status carries: it travels in a trailer, and clients refuse metadata
beyond a few kilobytes (a refused trailer turns the real status into RESOURCE_EXHAUSTED)."""


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a caller sees for `exc`."""
    if isinstance(exc, FerryError):
        for cls in type(exc).__mro__:
            code = STATUS.get(cls)
            if code is not None:
                return code, shown(str(exc), MAX_MESSAGE_CHARS)
    if isinstance(exc, asyncio.TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
    return grpc.StatusCode.INTERNAL, "internal error (see the server log)"


def log_if_unexpected(exc: BaseException) -> None:
    """Log the traceback of an error outside Ferry's family (a bug), once, where it is answered."""
    if not isinstance(exc, FerryError | asyncio.TimeoutError):
        log.error("internal error while serving a request", exc_info=exc)
