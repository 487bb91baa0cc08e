"""The GRPCInferenceService handlers: decode, hand to the model's scheduler, encode.

No batching logic and no backend code lives here. Every handler lets Ferry errors propagate to
`_rpc`, which turns them into a status through server/errors.py; streaming turns them into
`error_message` entries and keeps the stream open.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

import ferry
from ferry.common.errors import FerryError, ModelNotFound, ShuttingDown, Unsupported, shown
from ferry.proto import grpc_service_pb2 as pb
from ferry.proto import grpc_service_pb2_grpc as pb_grpc
from ferry.scheduler.request import InferenceResult
from ferry.scheduler.stats import Duration, ModelStats
from ferry.server.admission import Admission
from ferry.server.codec import decode, encode
from ferry.server.errors import log_if_unexpected, to_status
from ferry.server.memory import MemoryBudget
from ferry.server.observer import RequestObserver
from ferry.server.registration import Undecodable
from ferry.server.repository import READY, ModelRepository, ServedVersion
from ferry.server.stream import StreamLimits, StreamStopped, answer_stream

log = logging.getLogger("ferry.server")

SERVER_NAME = "ferry"
SERVER_VERSION = ferry.__version__  # from the installed package's metadata
EXTENSIONS = ("model_configuration", "statistics", "binary_tensor_data", "parameters")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def _rpc(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Map any error a unary handler raises to its gRPC status, in one place."""

    @functools.wraps(method)
    async def handler(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            if isinstance(request, Undecodable):
                raise request.refuse()
            return await method(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            log_if_unexpected(exc)
            code, message = to_status(exc)
            await context.abort(code, message)
            raise AssertionError("unreachable: abort raises") from exc

    return handler


def _unimplemented(name: str) -> Handler[Any, Any]:
    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise Unsupported(f"{name} is not implemented by Ferry yet")

    handler.__name__ = name
    return _rpc(handler)


class ReadinessState:
    """Whether the server takes traffic: ready after loading, not ready while draining."""

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
        if self._strict:
            return all(e.state == READY for e in entries)
        return True


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        repository: ModelRepository,
        readiness: ReadinessState,
        observer: RequestObserver | None = None,
        admission: Admission | None = None,
        stream_limits: StreamLimits | None = None,
        budget: MemoryBudget | None = None,
    ) -> None:
        self._repository = repository
        self._readiness = readiness
        self._observer = observer or RequestObserver()
        self._admission = admission or Admission()
        self._stream_limits = stream_limits or StreamLimits()
        self._budget = budget or MemoryBudget(0)

    # ---- health and metadata ----------------------------------------------------------------

    @_rpc
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._readiness.ready)

    @_rpc
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        try:
            served = self._repository.get(request.name, request.version)
        except FerryError:  # unknown, or known but not loaded: not ready (as Triton answers)
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(
            ready=served.scheduler.healthy and not self._readiness.draining
        )

    @_rpc
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS
        )

    @_rpc
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        served = self._repository.get(request.name, request.version)
        settings = served.settings
        sig = settings.signature
        batch = [-1] if sig.max_batch_size > 0 else []
        entry = self._repository.entry(served.name)
        return pb.ModelMetadataResponse(
            name=served.name,
            versions=sorted(entry.versions, key=int),
            platform=settings.config.platform or settings.config.backend,
            inputs=[
                pb.ModelMetadataResponse.TensorMetadata(
                    name=s.name, datatype=s.datatype.name, shape=[*batch, *s.dims]
                )
                for s in sig.inputs.values()
            ],
            outputs=[
                pb.ModelMetadataResponse.TensorMetadata(
                    name=s.name, datatype=s.datatype.name, shape=[*batch, *s.dims]
                )
                for s in sig.outputs.values()
            ],
        )

    @_rpc
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        served = self._repository.get(request.name, request.version)
        return pb.ModelConfigResponse(config=served.settings.config)

    # ---- inference --------------------------------------------------------------------------

    @_rpc
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        admission = self._admission
        admission.enter()
        try:
            return await self._infer(
                request, context.time_remaining(), context.invocation_metadata(), "ModelInfer"
            )
        finally:
            admission.leave()

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest | Undecodable],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Many requests in flight per stream, each answered when ready (server/stream.py)."""
        admission = self._admission
        try:
            admission.enter()
        except ShuttingDown as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        metadata = context.invocation_metadata()

        async def answer(
            request: pb.ModelInferRequest | Undecodable,
        ) -> pb.ModelStreamInferResponse:
            try:
                response = await self._infer(
                    request, context.time_remaining(), metadata, "ModelStreamInfer"
                )
                return pb.ModelStreamInferResponse(infer_response=response)
            except Exception as exc:
                log_if_unexpected(exc)
                echo = (
                    pb.ModelInferResponse()
                    if isinstance(request, Undecodable)
                    else pb.ModelInferResponse(
                        model_name=request.model_name,
                        model_version=request.model_version,
                        id=request.id,
                    )
                )
                return pb.ModelStreamInferResponse(
                    error_message=to_status(exc)[1], infer_response=echo
                )

        stopped = False
        try:
            async for response in answer_stream(
                request_iterator, answer, self._stream_limits, admission.reading
            ):
                yield response
        except StreamStopped:
            stopped = True
        finally:
            admission.leave()
        if stopped:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the server is shutting down: every request read on this stream was answered; "
                "send the rest to another replica",
            )

    async def _infer(
        self,
        request: pb.ModelInferRequest | Undecodable,
        time_remaining_s: float | None,
        metadata: Any = None,
        method: str = "ModelInfer",
    ) -> pb.ModelInferResponse:
        if isinstance(request, Undecodable):
            raise request.refuse()
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
        try:
            served = record.served = self._repository.get(
                request.model_name, request.model_version
            )
            sig = served.settings.signature
            decoded = decode(request, sig)
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
            )
            # Provenance: which artifact produced this answer.
            response.parameters["model_version"].string_param = served.version
            response.parameters["model_sha256"].string_param = served.sha256
        except BaseException as exc:
            budget.release(held)
            observer.end(record, None, exc, _code(exc))
            raise
        budget.release(held)
        observer.end(record, result, None, "OK")
        return response

    # ---- statistics and repository ----------------------------------------------------------

    @_rpc
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        if request.name:
            served = self._repository.get(request.name, request.version)
            chosen = (
                [served]
                if request.version
                else [v for v in self._repository.served() if v.name == request.name]
            )
        else:
            chosen = self._repository.served()
        return pb.ModelStatisticsResponse(model_stats=[_statistics(v) for v in chosen])

    @_rpc
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        if request.repository_name:
            raise ModelNotFound(
                f"unknown repository '{shown(request.repository_name)}' (Ferry serves one, unnamed)"
            )
        models: list[pb.RepositoryIndexResponse.ModelIndex] = []
        for entry in self._repository.entries():
            if entry.versions:
                models.extend(
                    pb.RepositoryIndexResponse.ModelIndex(
                        name=entry.name, version=version, state=entry.state
                    )
                    for version in sorted(entry.versions, key=int)
                )
            elif not request.ready:
                models.append(
                    pb.RepositoryIndexResponse.ModelIndex(
                        name=entry.name, state=entry.state, reason=entry.reason
                    )
                )
        return pb.RepositoryIndexResponse(models=models)

    RepositoryModelLoad = _unimplemented("RepositoryModelLoad")
    RepositoryModelUnload = _unimplemented("RepositoryModelUnload")
    SystemSharedMemoryStatus = _unimplemented("SystemSharedMemoryStatus")
    SystemSharedMemoryRegister = _unimplemented("SystemSharedMemoryRegister")
    SystemSharedMemoryUnregister = _unimplemented("SystemSharedMemoryUnregister")
    CudaSharedMemoryStatus = _unimplemented("CudaSharedMemoryStatus")
    CudaSharedMemoryRegister = _unimplemented("CudaSharedMemoryRegister")
    CudaSharedMemoryUnregister = _unimplemented("CudaSharedMemoryUnregister")
    TraceSetting = _unimplemented("TraceSetting")
    LogSettings = _unimplemented("LogSettings")


def _rows(request: pb.ModelInferRequest) -> int:
    """The rows a request says it sends (its first input's first dim), for the access log."""
    return int(request.inputs[0].shape[0]) if request.inputs and request.inputs[0].shape else 0


def _code(error: BaseException) -> str:
    """The status name a failed request got; CANCELLED when its caller went away."""
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    return str(to_status(error)[0].name)


def _duration(d: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def _statistics(served: ServedVersion) -> pb.ModelStatistics:
    s: ModelStats = served.scheduler.stats
    return pb.ModelStatistics(
        name=served.name,
        version=served.version,
        last_inference=s.last_inference_ms,
        inference_count=s.inference_count,
        execution_count=s.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(s.success),
            fail=_duration(s.fail),
            queue=_duration(s.queue),
            compute_input=_duration(s.compute_input),
            compute_infer=_duration(s.compute_infer),
            compute_output=_duration(s.compute_output),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=size,
                compute_input=_duration(b.compute_input),
                compute_infer=_duration(b.compute_infer),
                compute_output=_duration(b.compute_output),
            )
            for size, b in sorted(s.batch_stats.items())
        ],
    )
