"""One inference request's way through the server, whatever protocol carried it.

A front end (the gRPC servicer, the HTTP routes) turns its message into a `pb.ModelInferRequest`
(the tensors' data may travel beside it as `raw` buffers, views into the front end's own
message) and gets a `pb.ModelInferResponse` back; this module looks the model up, decodes and
validates (server/codec.py), holds the request's cost against the memory budget, schedules it,
encodes the answer with its provenance and tells the observer once, however it ends. Errors
propagate as the FerryError family; each front end maps them to its own statuses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

from ferry.proto import grpc_service_pb2 as pb
from ferry.scheduler.request import InferenceResult
from ferry.server.capture import Capture
from ferry.server.codec import Buffer, decode, encode
from ferry.server.errors import to_status
from ferry.server.memory import MemoryBudget
from ferry.server.observer import RequestObserver
from ferry.server.repository import ModelRepository, ServedVersion
from ferry.server.shared_memory import SharedMemoryRegistry


class Inference:
    def __init__(
        self,
        repository: ModelRepository,
        observer: RequestObserver | None = None,
        budget: MemoryBudget | None = None,
        regions: SharedMemoryRegistry | None = None,
        capture: Capture | None = None,
    ) -> None:
        self._repository = repository
        self._observer = observer or RequestObserver()
        self._budget = budget or MemoryBudget(0)
        self.regions = regions or SharedMemoryRegistry()
        self._capture = capture

    async def infer(
        self,
        request: pb.ModelInferRequest,
        time_remaining_s: float | None,
        metadata: Sequence[tuple[str, Any]] | None,
        method: str,
        raw: Sequence[Buffer | None] | None = None,
    ) -> pb.ModelInferResponse:
        """The answer to `request`; `raw` (one buffer per input, None for an input read from
        shared memory) replaces its raw_input_contents when the front end carries the data
        apart from the message."""
        observer = self._observer
        record = observer.begin(
            method,
            metadata,
            request.model_name,
            request.model_version,
            request.id,
            _rows(request) if observer.access_log is not None else 0,
        )
        result: InferenceResult | None = None
        budget = self._budget
        held = 0
        held_version: ServedVersion | None = None
        try:
            served = record.served = self._repository.get(
                request.model_name, request.model_version
            )
            served.active += 1  # a reload or unload waits for this request before closing it
            held_version = served
            sig = served.settings.signature
            regions = self.regions
            # Region views for the inputs that name one; otherwise the front end's own data,
            # which holds None only for such inputs (so none here).
            data: Sequence[Buffer] | None = regions.inputs(request, raw)
            if data is None:
                data = cast("Sequence[Buffer] | None", raw)
            targets = regions.outputs(request) if request.outputs else None
            decoded = decode(request, sig, data)
            if self._capture is not None:
                self._capture.offer(served.name, decoded.inputs)
            cost = MemoryBudget.cost(decoded.nbytes, decoded.rows * sig.output_row_bytes)
            budget.hold(cost)
            held = cost
            deadline_ns = (
                None
                if time_remaining_s is None
                else record.start_ns + int(time_remaining_s * 1e9)
            )
            result = await served.scheduler.infer(
                decoded.inputs,
                decoded.rows,
                priority=decoded.priority,
                timeout_s=decoded.timeout_s,
                deadline_ns=deadline_ns,
                request_id=request.id,
                nbytes=decoded.nbytes,
                trace=None if record.span is None else record.span.get_span_context(),
            )
            response = encode(
                result.outputs,
                decoded.outputs,
                sig,
                model_name=served.name,
                model_version=served.version,
                request_id=request.id,
                targets=targets,
                classification=decoded.classification,
            )
            # Provenance: which artifact produced this answer.
            response.parameters["model_version"].string_param = served.version
            response.parameters["model_sha256"].string_param = served.sha256
        except BaseException as exc:
            budget.release(held)
            if held_version is not None:
                held_version.active -= 1
            observer.end(record, None, exc, status_name(exc))
            raise
        budget.release(held)
        held_version.active -= 1
        observer.end(record, result, None, "OK")
        return response


def _rows(request: pb.ModelInferRequest) -> int:
    """The rows a request says it sends (its first input's first dim), for the access log."""
    return int(request.inputs[0].shape[0]) if request.inputs and request.inputs[0].shape else 0


def status_name(error: BaseException) -> str:
    """The status a failed request got, as the access log and spans name it (gRPC's names, the
    protocol-neutral vocabulary); CANCELLED when its caller went away."""
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    return str(to_status(error)[0].name)
