"""Build, start and stop the server: repository, gRPC services, listeners, signals.

Shutdown order: report not-ready (health NOT_SERVING) → stop accepting RPCs while in-flight ones
finish (up to drain_timeout_s) → stop the schedulers (whatever still waits gets UNAVAILABLE) →
close the engines. The first SIGTERM/SIGINT drains; a second one exits at once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2
from opentelemetry.sdk.trace import TracerProvider

from ferry.common.cpus import widen_to_compute
from ferry.engines.backends import default_registry
from ferry.engines.cuda.devices import Discovery
from ferry.engines.cuda.devices import discover as find_gpus
from ferry.engines.loading import Registry
from ferry.proto import grpc_service_pb2 as pb
from ferry.proto._pool import POOL
from ferry.scheduler.clock import MONOTONIC
from ferry.scheduler.loop_lag import LoopLag
from ferry.server.admission import Admission
from ferry.server.capture import Capture
from ferry.server.config import ServerConfig
from ferry.server.http.listener import HttpListener, listen
from ferry.server.http.routes import HttpContext, build_app
from ferry.server.live_settings import LogSettings, TraceSettings
from ferry.server.memory import MemoryBudget, default_budget_bytes
from ferry.server.model_control import ModelControl
from ferry.server.observer import RequestObserver
from ferry.server.readiness import ReadinessState
from ferry.server.registration import add_inference_service
from ferry.server.repository import ModelRepository, RepositoryOptions
from ferry.server.servicer import InferenceServicer
from ferry.server.shared_memory import SharedMemoryRegistry
from ferry.server.stream import StreamLimits
from ferry.server.tls import server_credentials
from ferry.telemetry.access_log import AccessLog
from ferry.telemetry.gpu import GpuCollector
from ferry.telemetry.metrics import Metrics
from ferry.telemetry.tracing import Tracing, make_provider

log = logging.getLogger("ferry.server")

INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
LIVE_SERVICE = "live"
"""The health service name a liveness probe asks for: SERVING from start until the process
stops, draining included. "" and the inference service answer readiness, NOT_SERVING while
loading and draining; a liveness probe on them would kill a pod in the middle of its drain."""


def _describe_standard_services() -> None:
    """Make health and reflection resolvable through reflection, which reads Ferry's pool."""
    for descriptor in (health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
        try:
            POOL.FindFileByName(descriptor.name)
        except KeyError:
            POOL.AddSerializedFile(descriptor.serialized_pb)


class FerryServer:
    def __init__(
        self,
        config: ServerConfig,
        tracer_provider: TracerProvider | None = None,
        loaders: Registry | None = None,
        discover: Callable[[], Discovery] | None = None,
    ) -> None:
        """`tracer_provider` replaces the one the config describes (tests record spans);
        `loaders` and `discover` replace the backends and the host's GPUs (tests without a
        GPU use doubles of CUDA and TensorRT)."""
        self.config = config
        tracing = None
        if tracer_provider is not None:
            tracing = Tracing(tracer_provider)
        elif config.tracing.enabled:
            tracing = Tracing(make_provider(config.tracing), config.tracing.ratio)
        metrics = Metrics(self._state, self._process) if config.metrics_port >= 0 else None
        if metrics is not None:
            gpus = GpuCollector()
            if gpus.available:
                metrics.registry.register(gpus)
        access_log = (
            AccessLog(config.access_log, config.access_log_sample) if config.access_log else None
        )
        self.telemetry = RequestObserver(tracing, metrics, access_log)
        self.capture = Capture(config.capture) if config.capture is not None else None
        observers = tuple(o for o in (tracing, metrics) if o is not None)
        self.loop_lag = LoopLag(MONOTONIC)
        self.repository = ModelRepository(
            config.model_repository,
            RepositoryOptions(
                config.default_max_batch_size,
                config.max_queue_bytes,
                observers,
                loaders or default_registry(),
                discover or find_gpus,
                config.slo_p99_ms,
                self.loop_lag,
            ),
        )
        self.metrics_port: int | None = None
        self.admission = Admission()
        self.readiness = ReadinessState(self.repository, config.strict_readiness, self.admission)
        self._tasks_alive = 0
        self._sampler: asyncio.Task[None] | None = None
        budget = config.memory_budget_bytes
        self.budget = MemoryBudget(default_budget_bytes() if budget is None else budget)
        self._health = health_aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._http: HttpListener | None = None
        self.regions = SharedMemoryRegistry()
        self.control = ModelControl(
            self.repository,
            config.model_control_mode,
            config.load_models,
            config.repository_poll_secs,
        )
        self.http_port: int | None = None
        self.tcp_port: int | None = None
        self.addresses: list[str] = []

    async def start(self) -> None:
        self.repository.on_change = self._models_changed
        await self.control.start()
        options = [
            ("grpc.max_send_message_length", self.config.max_message_bytes),
            ("grpc.max_receive_message_length", self.config.max_message_bytes),
            # Never share a port by accident; worker processes that mean to ask for it.
            ("grpc.so_reuseport", 1 if self.config.reuse_port else 0),
        ]
        server = grpc.aio.server(options=options)
        servicer = InferenceServicer(
            self.repository,
            self.readiness,
            self.telemetry,
            self.admission,
            StreamLimits(self.config.max_stream_requests, self.config.max_stream_bytes),
            self.budget,
            self.regions,
            self.control,
            self.capture,
        )
        add_inference_service(servicer, server, self.budget)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        _describe_standard_services()
        reflection.enable_server_reflection(
            (INFERENCE_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server, pool=POOL
        )
        if self.config.grpc_port >= 0:
            host = self.config.host
            address = f"[{host}]" if ":" in host else host
            where = f"{address}:{self.config.grpc_port}"
            if self.config.tls is None:
                self.tcp_port = server.add_insecure_port(where)
            else:
                self.tcp_port = server.add_secure_port(where, server_credentials(self.config.tls))
            self.addresses.append(f"{address}:{self.tcp_port}")
        if self.config.unix_socket:
            _remove_stale_socket(Path(self.config.unix_socket))
            server.add_insecure_port(f"unix:{self.config.unix_socket}")
            self.addresses.append(f"unix:{self.config.unix_socket}")
        await server.start()
        self._server = server
        if self.config.http_port >= 0:
            context = HttpContext(
                self.repository,
                self.readiness,
                servicer.inference,
                self.admission,
                self.budget,
                self.control,
                TraceSettings(self.telemetry.tracing),
                LogSettings(),
            )
            self._http = await listen(
                build_app(context, self.config.max_message_bytes),
                self.config.host,
                self.config.http_port,
                self.config.tls,
                self.config.reuse_port,
            )
            host = self.config.host
            shown = f"[{host}]" if ":" in host else host
            scheme = "http" if self.config.tls is None else "https"
            self.http_port = self._http.port
            log.info("HTTP on %s://%s:%d", scheme, shown, self.http_port)
        if self.telemetry.metrics is not None:
            host = self.config.host
            self.metrics_port = self.telemetry.metrics.serve(
                host, self.config.metrics_port, lambda: self.readiness.ready
            )
            shown = f"[{host}]" if ":" in host else host
            log.info("metrics on http://%s:%d/metrics", shown, self.metrics_port)
        if self.telemetry.tracing is not None:
            log.info(
                "tracing: exporter %s, ratio %g",
                self.config.tracing.exporter,
                self.config.tracing.ratio,
            )
        self.readiness.started = True
        self.loop_lag.start()  # owned like the sampler: from here to stop()
        self._sampler = asyncio.create_task(self._sample_tasks(), name="ferry-task-sampler")
        await self._publish_health()
        _freeze_startup_objects()
        log.info("serving on %s", ", ".join(self.addresses))

    def _process(self) -> dict[str, tuple[str, float]]:
        """The process's own gauges (read from the metrics thread: plain numbers)."""
        return {
            "ferry_requests_in_flight": (
                "Inference requests and streams accepted and not yet answered",
                self.admission.inside,
            ),
            "ferry_memory_budget_held_bytes": (
                "What requests in flight hold of the memory budget (server/memory.py)",
                self.budget.held_bytes,
            ),
            "ferry_memory_budget_bytes": (
                "The memory budget; 0: none",
                self.budget.limit_bytes,
            ),
            "ferry_event_loop_lag_seconds": (
                "How late the event loop ran what was due, worst over the last second "
                "(scheduler/loop_lag.py): what requests wait outside any queue",
                self.loop_lag.worst_s,
            ),
            "ferry_event_loop_tasks": (
                "Tasks alive on the event loop, sampled every second",
                self._tasks_alive,
            ),
        }

    async def _sample_tasks(self) -> None:
        while True:
            self._tasks_alive = len(asyncio.all_tasks())
            await asyncio.sleep(1.0)

    def _state(self) -> list[tuple[str, str, dict[int, int], dict[str, int], float]]:
        """What the metrics endpoint reads at scrape time (from its own thread)."""
        now = time.monotonic()
        return [
            (
                s.name,
                s.version,
                s.scheduler.queue_depths(),
                s.scheduler.busy_ns(),
                now - s.started,
            )
            for s in self.repository.served()
        ]

    async def _models_changed(self) -> None:
        if self._server is not None and not self.admission.draining:
            await self._publish_health()

    async def _publish_health(self) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.readiness.ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", INFERENCE_SERVICE):
            await self._health.set(service, status)
        await self._health.set(LIVE_SERVICE, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain, then stop (server/admission.py): health NOT_SERVING and new inference requests
        refused with UNAVAILABLE at once; accepted ones finish, up to the drain timeout; the
        transport stops once nothing accepted is left and calls have stopped arriving."""
        grace = self.config.drain_timeout_s if grace_s is None else grace_s
        self.admission.drain()  # not ready from here on (ReadinessState reads it)
        await self._publish_health()  # "live" stays SERVING: draining is not dying
        if self._server is not None:
            log.info("draining: finishing in-flight requests (up to %.1f s)", grace)
            if not await self.admission.settled(grace, QUIET_S):
                log.warning(
                    "drain timeout: %d accepted request(s) or stream(s) still open",
                    self.admission.inside,
                )
            await self._server.stop(STOP_GRACE_S)
        if self._http is not None:
            await self._http.stop()
        await self.control.stop()
        await self.repository.stop()
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
        self.loop_lag.stop()
        telemetry = self.telemetry
        if telemetry.metrics is not None:
            telemetry.metrics.stop()
        if telemetry.tracing is not None:
            await asyncio.to_thread(telemetry.tracing.shutdown)  # flushes unexported spans
        if telemetry.access_log is not None:
            telemetry.access_log.close()
        if self.capture is not None:
            await asyncio.to_thread(self.capture.close)  # writes what was sampled
        if self.config.unix_socket:
            _remove_stale_socket(Path(self.config.unix_socket))
        log.info("stopped")


QUIET_S = 0.2
"""A draining server stops its transport only after no call has arrived for this long: calls
already on their way are answered UNAVAILABLE (retryable), not cut off as CANCELLED."""

STOP_GRACE_S = 1.0
"""What the transport gives answers still being written when it stops."""


def _freeze_startup_objects() -> None:
    """Move everything alive after start-up (modules, models, sessions: tens of thousands of
    objects) out of the garbage collector's reach.

    They live as long as the server, yet every full collection walked them all with the event
    loop stopped, often enough under load to set the p99 of every request caught behind one.
    Frozen, a full collection walks only what requests allocate. The price: a frozen object that
    later ends up in a reference cycle is never reclaimed; start-up objects live as long as the
    server anyway."""
    gc.collect()
    gc.freeze()


def _remove_stale_socket(path: Path) -> None:
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM/SIGINT, then drain and exit."""
    loop = asyncio.get_running_loop()
    # asyncio.to_thread's threads open GPU sessions and copy files: they compute, so they run on
    # every CPU, not on the front end's one (common/cpus.py).
    loop.set_default_executor(
        ThreadPoolExecutor(thread_name_prefix="ferry-thread", initializer=widen_to_compute)
    )
    server = FerryServer(config)
    stopping = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stopping.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s: shutting down gracefully", signal.Signals(signum).name)
        stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    await server.start()
    try:
        await stopping.wait()
    finally:
        await server.stop()
