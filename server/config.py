"""Server options (frozen; validated on construction). The CLI builds one; nothing else reads
flags or the environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ferry.server.capture import CaptureConfig
from ferry.server.tls import TlsConfig
from ferry.telemetry.tracing import TracingConfig


@dataclass(frozen=True)
class ServerConfig:
    """How the server listens and behaves.

    model_repository: folder in Triton's layout (<model>/config.pbtxt, <model>/<n>/model.onnx).
    host, grpc_port: TCP address; port 0 picks a free port (tests). grpc_port < 0 disables TCP
        (then unix_socket must be set).
    unix_socket: also listen on this Unix socket path (sidecars); None = no socket. It stays
        plaintext: it never leaves the host, and only processes that may open the file reach it.
    tls: serve TCP with TLS (and mutual TLS with a client CA), certificates reloaded when their
        files change (server/tls.py); None = plaintext.
    max_message_bytes: largest request or response message, both directions. Default 256 MiB.
    default_max_batch_size: max_batch_size for models without config.pbtxt that can batch.
    max_queue_bytes: input bytes each model's queues may hold; past it new requests are refused
        with UNAVAILABLE, so memory stays bounded under any load. 0 = no bound. A model's
        `ferry.max_queue_bytes` parameter overrides it.
    memory_budget_bytes: what the requests the server holds may cost in all (server/memory.py);
        past it a request is refused at once with UNAVAILABLE. None: an eighth of the memory the
        process may use, at most 256 MiB; 0 = no budget.
    strict_readiness: ServerReady (and health) report ready only when every model loaded, as
        Triton does by default; off: ready once the server runs.
    drain_timeout_s: on SIGTERM/SIGINT, how long in-flight requests may take to finish.
    max_stream_requests, max_stream_bytes: requests (and their input bytes) one
        ModelStreamInfer stream may have read and not yet answered; past either the server
        stops reading the stream until answers drain, so a client that never reads its answers
        cannot grow the server.
    model_control_mode, load_models, repository_poll_secs: which models load at start and
        how the repository changes while serving (server/model_control.py).
    http_port: the HTTP/REST front end (KServe v2 REST, as Triton) on this port (same host and
        TLS as gRPC); 0 picks a free one, < 0 = off.
    metrics_port: Prometheus /metrics on this port (same host); 0 picks a free one, < 0 = off.
    tracing: where spans go and which share of requests is traced (telemetry/tracing.py).
    access_log: write one JSON line per sampled request here ("-" = stderr); None = off.
    access_log_sample: the share of requests the access log records.
    capture: where and how much of the request inputs to keep for `ferry build --calibration`
        (server/capture.py); None = off.
    slo_p99_ms: every batched model's p99 latency budget unless its config sets
        `ferry.slo.p99_ms`; None = fixed batching settings, as Triton.
    """

    model_repository: Path
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = -1
    unix_socket: str | None = None
    tls: TlsConfig | None = None
    max_message_bytes: int = 256 * 1024 * 1024
    default_max_batch_size: int = 4
    max_queue_bytes: int = 512 * 1024 * 1024
    memory_budget_bytes: int | None = None
    strict_readiness: bool = True
    drain_timeout_s: float = 30.0
    max_stream_requests: int = 256
    max_stream_bytes: int = 64 * 1024 * 1024
    metrics_port: int = 8002
    tracing: TracingConfig = field(default_factory=TracingConfig)
    access_log: str | None = None
    access_log_sample: float = 1.0
    reuse_port: bool = False  # a worker sharing its port with others (server/workers.py)
    model_control_mode: str = "none"
    load_models: tuple[str, ...] = ()
    repository_poll_secs: float = 15.0
    capture: CaptureConfig | None = None  # a sample of request inputs for ferry build
    slo_p99_ms: float | None = None  # default latency budget (scheduler/slo.py)

    def __post_init__(self) -> None:
        if self.grpc_port > 65535:
            raise ValueError(f"grpc_port must be <= 65535, got {self.grpc_port}")
        if self.grpc_port < 0 and not self.unix_socket:
            raise ValueError("with TCP disabled (grpc_port < 0) a unix_socket is required")
        if self.max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be > 0, got {self.max_message_bytes}")
        if self.default_max_batch_size < 0:
            raise ValueError(
                f"default_max_batch_size must be >= 0, got {self.default_max_batch_size}"
            )
        if self.memory_budget_bytes is not None and self.memory_budget_bytes < 0:
            raise ValueError(f"memory_budget_bytes must be >= 0, got {self.memory_budget_bytes}")
        if self.max_queue_bytes < 0:
            raise ValueError(f"max_queue_bytes must be >= 0, got {self.max_queue_bytes}")
        if self.http_port > 65535:
            raise ValueError(f"http_port must be <= 65535, got {self.http_port}")
        if self.metrics_port > 65535:
            raise ValueError(f"metrics_port must be <= 65535, got {self.metrics_port}")
        if self.slo_p99_ms is not None and not self.slo_p99_ms > 0:
            raise ValueError(f"slo_p99_ms must be > 0, got {self.slo_p99_ms}")
        if not 0.0 < self.access_log_sample <= 1.0:
            raise ValueError(f"access_log_sample must be in (0, 1], got {self.access_log_sample}")
        if self.max_stream_requests < 1 or self.max_stream_bytes < 1:
            raise ValueError(
                f"stream limits must be >= 1, got max_stream_requests={self.max_stream_requests}"
                f", max_stream_bytes={self.max_stream_bytes}"
            )
        if self.model_control_mode not in ("none", "explicit", "poll"):
            raise ValueError(
                f"model_control_mode is none, explicit or poll, got {self.model_control_mode!r}"
            )
        if self.load_models and self.model_control_mode != "explicit":
            raise ValueError("--load-model needs --model-control-mode explicit")
        if self.repository_poll_secs <= 0:
            raise ValueError(
                f"repository_poll_secs must be > 0, got {self.repository_poll_secs}"
            )
        if self.drain_timeout_s < 0:
            raise ValueError(f"drain_timeout_s must be >= 0, got {self.drain_timeout_s}")
