"""Registering the GRPCInferenceService with a grpc.aio server, with decoding Ferry controls.

The generated registration hands every request to protobuf before a handler runs, so bytes that
do not decode reach the client as UNKNOWN "Unexpected <class DecodeError>". Here each method's
deserializer never raises: bytes that do not decode become an `Undecodable` record, and the
handler answers it with INVALID_ARGUMENT like any other bad input. An inference message too big
for what the memory budget has left is not decoded at all (UNAVAILABLE, server/memory.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from ferry.common.errors import FerryError, InvalidInput, QueueFull
from ferry.proto import grpc_service_pb2 as pb
from ferry.server.memory import MemoryBudget

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


@dataclass(frozen=True)
class Undecodable:
    """A request message that was not decoded: its bytes are no valid message (`reason`), or
    it was too big for the memory budget (`over_budget`). The handler answers `refuse()`."""

    message: str
    nbytes: int
    reason: str = ""
    over_budget: bool = False

    def refuse(self) -> FerryError:
        if self.over_budget:
            return QueueFull(
                f"Exceeds the server's memory budget: a {self.message} of {self.nbytes} bytes "
                "does not fit what requests in flight leave of it"
            )
        return InvalidInput(
            f"the request is not a valid {self.message} ({self.nbytes} bytes): {self.reason}"
        )


def _decoder(cls: type[Message], budget: MemoryBudget | None) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Message | Undecodable:
        if budget is not None and not budget.fits(MemoryBudget.cost(len(data), 0)):
            return Undecodable(cls.__name__, len(data), over_budget=True)
        try:
            return cls.FromString(data)
        except (DecodeError, RuntimeError, ValueError) as exc:
            return Undecodable(cls.__name__, len(data), str(exc)[:200] or type(exc).__name__)

    return decode


INFERENCE_REQUESTS = ("ModelInfer", "ModelStreamInfer")
"""The methods whose messages carry tensors: checked against the memory budget undecoded."""


def _handler(method: Any, servicer: Any, budget: MemoryBudget | None) -> grpc.RpcMethodHandler:
    request = getattr(pb, method.input_type.name)
    response = getattr(pb, method.output_type.name)
    behaviour = getattr(servicer, method.name)
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(method.client_streaming, method.server_streaming)]
    return make(
        behaviour,
        request_deserializer=_decoder(
            request, budget if method.name in INFERENCE_REQUESTS else None
        ),
        response_serializer=response.SerializeToString,
    )


def add_inference_service(
    servicer: Any, server: grpc.aio.Server, budget: MemoryBudget | None = None
) -> None:
    """Serve every method of the service through `servicer`'s method of the same name;
    inference messages too big for what `budget` has left are refused undecoded."""
    handlers = {method.name: _handler(method, servicer, budget) for method in SERVICE.methods}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    # Registered too, as grpcio-tools' generated code does: gRPC then finds the handler from
    # the method the call names instead of asking the generic handler (docs/benchmarks.md).
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
