"""The one place where Ferry's errors become HTTP statuses, as Triton maps its error kinds.

Ferry's errors first become a gRPC code (server/errors.py, the protocol-neutral table); this
maps those codes onto HTTP: not found 404, unavailable 503, unsupported 501, internal 500, and
every other refusal 400. The body is `{"error": message}`, as Triton writes it.
"""

from __future__ import annotations

import grpc

from ferry.server.errors import to_status

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
OTHERWISE = 400


def to_http(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and message a caller sees for `exc`."""
    code, message = to_status(exc)
    return HTTP_STATUS.get(code, OTHERWISE), message
