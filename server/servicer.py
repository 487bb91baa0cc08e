"""The GRPCInferenceService handlers: the gRPC front end.

Inference goes through server/inference.py, answers about the server and its models come from
server/answers.py (both shared with the HTTP front end); what is gRPC's own lives here: the
status mapping, streams, the message decoders' refusals. No batching logic and no backend code.
Every handler lets Ferry errors propagate to `_rpc`, which turns them into a status through
server/errors.py; streaming turns them into `error_message` entries and keeps the stream open.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from ferry.common.errors import InvalidInput, ShuttingDown, Unsupported, shown
from ferry.proto import grpc_service_pb2 as pb
from ferry.proto import grpc_service_pb2_grpc as pb_grpc
from ferry.server import answers
from ferry.server.admission import Admission
from ferry.server.capture import Capture
from ferry.server.errors import log_if_unexpected, to_status
from ferry.server.inference import Inference
from ferry.server.live_settings import LogSettings, TraceSettings
from ferry.server.memory import MemoryBudget
from ferry.server.model_control import LoadRequest, ModelControl
from ferry.server.observer import RequestObserver
from ferry.server.readiness import ReadinessState
from ferry.server.registration import Undecodable
from ferry.server.repository import ModelRepository
from ferry.server.shared_memory import SharedMemoryRegistry
from ferry.server.stream import StreamLimits, StreamStopped, answer_stream

log = logging.getLogger("ferry.server")


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


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        repository: ModelRepository,
        readiness: ReadinessState,
        observer: RequestObserver | None = None,
        admission: Admission | None = None,
        stream_limits: StreamLimits | None = None,
        budget: MemoryBudget | None = None,
        regions: SharedMemoryRegistry | None = None,
        control: ModelControl | None = None,
        capture: Capture | None = None,
    ) -> None:
        self._repository = repository
        tracing = observer.tracing if observer is not None else None
        self._trace_settings = TraceSettings(tracing)
        self._log_settings = LogSettings()
        self._control = control or ModelControl(repository)
        self._readiness = readiness
        self.inference = Inference(repository, observer, budget, regions, capture)
        self._admission = admission or Admission()
        self._stream_limits = stream_limits or StreamLimits()

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
        repository, readiness = self._repository, self._readiness
        ready = answers.model_ready(repository, readiness, request.name, request.version)
        return pb.ModelReadyResponse(ready=ready)

    @_rpc
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return answers.server_metadata()

    @_rpc
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        return answers.model_metadata(self._repository, request.name, request.version)

    @_rpc
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        return answers.model_config(self._repository, request.name, request.version)

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
        return await self.inference.infer(request, time_remaining_s, metadata, method)

    # ---- statistics and repository ----------------------------------------------------------

    @_rpc
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        return answers.model_statistics(self._repository, request.name, request.version)

    @_rpc
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        return answers.repository_index(self._repository, request.repository_name, request.ready)

    CudaSharedMemoryRegister = _unimplemented("CudaSharedMemoryRegister")

    # ---- model control ------------------------------------------------------------------------

    @_rpc
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        answers.one_repository(request.repository_name)
        config: str | None = None
        files: dict[str, bytes] = {}
        for key, parameter in request.parameters.items():
            kind = parameter.WhichOneof("parameter_choice")
            if key == "config":
                if kind != "string_param":
                    raise InvalidInput("parameter 'config' must be a string (JSON)")
                config = parameter.string_param
            elif key.startswith("file:"):
                if kind != "bytes_param":
                    raise InvalidInput(f"parameter '{shown(key)}' must carry bytes")
                files[key[len("file:") :]] = parameter.bytes_param
        await self._control.load(request.model_name, LoadRequest(config, files))
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        answers.one_repository(request.repository_name)
        await self._control.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # ---- live settings ------------------------------------------------------------------------

    @_rpc
    async def TraceSetting(
        self, request: pb.TraceSettingRequest, context: grpc.aio.ServicerContext
    ) -> pb.TraceSettingResponse:
        if request.model_name:
            self._repository.entry(request.model_name)  # an unknown model is NOT_FOUND
        changes = {key: list(value.value) for key, value in request.settings.items()}
        settings = self._trace_settings.update(request.model_name, changes)
        response = pb.TraceSettingResponse()
        for key, values in settings.items():
            response.settings[key].value.extend(values)
        return response

    @_rpc
    async def LogSettings(
        self, request: pb.LogSettingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.LogSettingsResponse:
        changes: dict[str, bool | int | str] = {}
        for key, value in request.settings.items():
            kind = value.WhichOneof("parameter_choice")
            if kind is None:
                raise InvalidInput(f"log setting '{shown(key)}' has no value")
            changes[key] = getattr(value, kind)
        settings = self._log_settings.update(changes)
        response = pb.LogSettingsResponse()
        for key, setting in settings.items():
            field = {bool: "bool_param", int: "uint32_param", str: "string_param"}[type(setting)]
            setattr(response.settings[key], field, setting)
        return response

    # ---- shared memory ------------------------------------------------------------------------

    @_rpc
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryStatusResponse:
        return answers.system_shared_memory_status(self.inference.regions, request.name)

    @_rpc
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self.inference.regions.register(
            request.name, request.key, request.offset, request.byte_size
        )
        return pb.SystemSharedMemoryRegisterResponse()

    @_rpc
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self.inference.regions.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @_rpc
    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryStatusResponse:
        if request.name:
            raise InvalidInput(f"Unable to find cuda shared memory region: '{shown(request.name)}'")
        return pb.CudaSharedMemoryStatusResponse()  # none can be registered

    @_rpc
    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        return pb.CudaSharedMemoryUnregisterResponse()  # nothing registered: nothing to do

