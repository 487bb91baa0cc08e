"""`ferry health`: one grpc.health.v1 Check against a running server, as an exit code.

Container health checks (the Dockerfile's HEALTHCHECK) and exec probes run it. It exits 0 when
the service answers SERVING and 1 otherwise (NOT_SERVING, unknown service, no answer in time),
printing why, so `docker inspect` shows the reason. The default service, "live", answers
whether the process serves at all; "" answers readiness (server/app.py).
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


def check(address: str, service: str, timeout_s: float) -> tuple[bool, str]:
    """(healthy, what was seen) for one Check call on a plaintext channel (TCP or unix:)."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            return False, f"{exc.code().name}: {exc.details()}"
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == SERVING, name
