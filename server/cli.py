"""The `ferry` command: `ferry serve` runs the server, `ferry example-repo` writes the examples,
`ferry health` asks a running server whether it serves."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ferry.server.capture import CaptureConfig
from ferry.server.config import ServerConfig
from ferry.server.tls import TlsConfig
from ferry.telemetry.tracing import TracingConfig

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MAX_GIL_SWITCH_US = 1_000_000

log = logging.getLogger("ferry.server")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferry", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve a model repository over gRPC")
    serve.add_argument("--model-repository", required=True, type=Path, metavar="DIR")
    serve.add_argument("--host", default="127.0.0.1", help="TCP address (default 127.0.0.1)")
    serve.add_argument("--grpc-port", type=int, default=8001, help="TCP port; 0 picks a free one")
    serve.add_argument(
        "--http-port",
        type=int,
        default=8000,
        help="HTTP/REST port (KServe v2 REST, as Triton; default 8000; 0 picks one; -1 off)",
    )
    serve.add_argument("--unix-socket", metavar="PATH", help="also listen on this Unix socket")
    serve.add_argument(
        "--model-control-mode",
        choices=["none", "explicit", "poll"],
        default="none",
        help="none: load every model at start (default); explicit: load --load-model names at "
        "start, then on request; poll: load every model and follow the repository's changes",
    )
    serve.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="explicit mode: a model to load at start (repeatable; '*' for all)",
    )
    serve.add_argument(
        "--repository-poll-secs",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="poll mode: how often the repository is read again (default 15)",
    )
    serve.add_argument(
        "--max-message-bytes",
        type=int,
        default=256 * 1024 * 1024,
        help="largest request/response message (default 256 MiB)",
    )
    serve.add_argument(
        "--default-max-batch-size",
        type=int,
        default=4,
        help="max_batch_size for batchable models without config.pbtxt (default 4)",
    )
    serve.add_argument(
        "--max-queue-bytes",
        type=int,
        default=512 * 1024 * 1024,
        help="input bytes each model's queues may hold before refusing new requests "
        "(default 512 MiB; 0 = no bound; parameter ferry.max_queue_bytes overrides per model)",
    )
    serve.add_argument(
        "--strict-readiness",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ready only when every model loaded (default on, as Triton)",
    )
    serve.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, how long in-flight requests may take to finish (default 30)",
    )
    serve.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve TCP with TLS: chain")
    serve.add_argument("--tls-key", type=Path, metavar="PEM", help="its private key")
    serve.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="PEM",
        help="require client certificates signed by this CA (mutual TLS)",
    )
    serve.add_argument(
        "--memory-budget",
        type=int,
        metavar="BYTES",
        help="what requests in flight may cost in all before new ones are refused (default: an "
        "eighth of the memory the process may use, at most 256 MiB; 0: none)",
    )
    serve.add_argument(
        "--max-stream-requests",
        type=int,
        default=256,
        metavar="N",
        help="requests a stream may have unanswered before the server stops reading it (256)",
    )
    serve.add_argument(
        "--max-stream-bytes",
        type=int,
        default=64 * 1024 * 1024,
        metavar="BYTES",
        help="their input bytes (default 64 MiB)",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=8002,
        help="Prometheus /metrics port (default 8002; 0 picks one; -1 turns metrics off)",
    )
    serve.add_argument(
        "--tracing",
        choices=["none", "otlp", "console"],
        help="span exporter (default: OTEL_TRACES_EXPORTER, else none); OTLP is configured by "
        "the standard OTEL_EXPORTER_OTLP_* variables",
    )
    serve.add_argument(
        "--trace-ratio",
        type=float,
        help="share of requests traced, 0..1 (default: OTEL_TRACES_SAMPLER_ARG, else 1); a "
        "caller's sampled traceparent is always followed",
    )
    serve.add_argument("--access-log", metavar="PATH", help="JSON lines per request ('-': stderr)")
    serve.add_argument(
        "--access-log-sample", type=float, default=1.0, help="share of requests logged (default 1)"
    )
    serve.add_argument(
        "--slo-p99-ms",
        type=float,
        help="a p99 latency budget for every batched model (its ferry.slo.p99_ms wins): batching "
        "adapts to hold it and refuses early what cannot make it",
    )
    serve.add_argument(
        "--capture",
        type=Path,
        metavar="DIR",
        help="write a sample of request inputs per model to DIR (for ferry build --calibration)",
    )
    serve.add_argument(
        "--capture-sample", type=float, default=0.01, help="share of requests captured (0.01)"
    )
    serve.add_argument(
        "--capture-max-bytes",
        type=int,
        default=1 << 30,
        help="stop capturing after this many bytes of inputs (1 GiB)",
    )
    serve.add_argument(
        "--workers",
        default="1",
        help="server processes sharing the TCP port (SO_REUSEPORT), each on its own share of the "
        "CPUs: N, 'auto' (one per CPU this process may use, at most 8, and as many as half its "
        "memory holds with every model loaded in each), or 'gpu' for one per GPU "
        "or MIG instance, each seeing only its own device, or 'gpu:N' for N per device; "
        "default 1",
    )
    serve.add_argument(
        "--pin-front-end",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the event loop and gRPC's threads on one of the process's CPUs and compute on "
        "all of them: a request's hand-offs between front-end threads stay on one core "
        "(default: on, where the process may use two or more CPUs)",
    )
    serve.add_argument(
        "--gil-switch-us",
        type=int,
        metavar="US",
        help="how long a thread waiting for the GIL lets a busy one run before it must let go "
        "(sys.setswitchinterval; Python's default 5000): the event loop, gRPC's threads and a "
        "GPU instance's threads hand the GIL over several times a batch, and each hand-off to a "
        "busy loop may wait this long. Lower cuts tail latency under load at a few-ms budget "
        "(docs/benchmarks.md); far lower starves the loop",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    example = commands.add_parser("example-repo", help="write the example model repository")
    example.add_argument("directory", type=Path, metavar="DIR")
    example.add_argument(
        "--large",
        action="store_true",
        help="also write dlrm_large (0.69 GB, 172M weights; a GPU model, KIND_GPU)",
    )
    example.add_argument(
        "--no-int8",
        action="store_true",
        help="leave out dlrm_int8 (dlrm built to INT8 by ferry build; seconds to make)",
    )
    from ferry.builder.cli import add_parser as add_build

    add_build(commands)
    health = commands.add_parser(
        "health", help="ask a running server's gRPC health service; exit 0 when SERVING"
    )
    health.add_argument(
        "--address", default="127.0.0.1:8001", help="host:port or unix:PATH (plaintext)"
    )
    health.add_argument(
        "--service",
        default="live",
        help="'live' (the process serves; the default) or '' (ready for traffic)",
    )
    health.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS")
    return parser


def _tls(args: argparse.Namespace) -> TlsConfig | None:
    if args.tls_cert is None and args.tls_key is None:
        if args.tls_client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    return TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "example-repo":
        from ferry.server.example_repo import write_example_repo, write_int8_dlrm

        written = write_example_repo(args.directory, large=args.large)
        if not args.no_int8:
            written += write_int8_dlrm(args.directory)
        for path in written:
            print(path)
        return 0

    if args.command == "build":
        from ferry.builder.cli import run as run_build

        return run_build(args)

    if args.command == "health":
        from ferry.server.health_probe import check

        healthy, seen = check(args.address, args.service, args.timeout)
        print(f"{args.address} service {args.service!r}: {seen}")
        return 0 if healthy else 1

    from ferry.common.memory import limit_malloc_arenas

    limit_malloc_arenas()  # before any thread starts
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT, stream=sys.stderr)
    try:
        config = ServerConfig(
            model_repository=args.model_repository,
            host=args.host,
            grpc_port=args.grpc_port,
            http_port=args.http_port,
            unix_socket=args.unix_socket,
            max_message_bytes=args.max_message_bytes,
            default_max_batch_size=args.default_max_batch_size,
            max_queue_bytes=args.max_queue_bytes,
            strict_readiness=args.strict_readiness,
            drain_timeout_s=args.drain_timeout,
            tls=_tls(args),
            max_stream_requests=args.max_stream_requests,
            memory_budget_bytes=args.memory_budget,
            max_stream_bytes=args.max_stream_bytes,
            metrics_port=args.metrics_port,
            tracing=TracingConfig.from_env(os.environ, args.tracing, args.trace_ratio),
            access_log=args.access_log,
            access_log_sample=args.access_log_sample,
            reuse_port=args.reuse_port,
            model_control_mode=args.model_control_mode,
            load_models=tuple(args.load_model),
            repository_poll_secs=args.repository_poll_secs,
            slo_p99_ms=args.slo_p99_ms,
            capture=None
            if args.capture is None
            else CaptureConfig(args.capture, args.capture_sample, args.capture_max_bytes),
        )
    except ValueError as exc:
        print(f"ferry: {exc}", file=sys.stderr)
        return 2
    if args.gil_switch_us is not None and not 0 < args.gil_switch_us <= MAX_GIL_SWITCH_US:
        print(f"ferry: --gil-switch-us takes 1 to {MAX_GIL_SWITCH_US}", file=sys.stderr)
        return 2
    devices: list[str] = []
    kind, _, per_device = args.workers.partition(":")
    if kind == "gpu" and (not per_device or (per_device.isdigit() and int(per_device) >= 1)):
        from ferry.engines.cuda.devices import discover

        found = discover()
        if not found.devices:
            print(f"ferry: --workers {args.workers}, but no GPU: {found.reason}", file=sys.stderr)
            return 2
        # Worker i*N+j is the j-th of device i's N workers: devices are dealt out in order.
        devices = [d.uuid for d in found.devices for _ in range(int(per_device or 1))]
        workers = len(devices)
    elif args.workers == "auto":
        from ferry.common.cpus import usable_cpus
        from ferry.server.model_control import loaded_at_start
        from ferry.server.repository import serving_bytes
        from ferry.server.workers import auto_workers

        loading = loaded_at_start(config.model_control_mode, config.load_models)
        model_bytes = serving_bytes(config.model_repository, loading)
        workers = auto_workers(model_bytes)
        log.info(
            "--workers auto: %d worker(s) for %d usable CPU(s) and %.1f MiB of models",
            workers, usable_cpus(), model_bytes / 2**20,
        )  # fmt: skip
    elif args.workers.isdigit() and int(args.workers) >= 1:
        workers = int(args.workers)
    else:
        print("ferry: --workers takes a number >= 1, 'auto', 'gpu' or 'gpu:N'", file=sys.stderr)
        return 2
    if workers > 1 or devices:
        if config.unix_socket or config.grpc_port < 0:
            print("ferry: several workers share a TCP port; a Unix socket cannot be shared "
                  "(drop --unix-socket or use --workers 1)", file=sys.stderr)  # fmt: skip
            return 2
        from ferry.server.workers import Ports, supervise

        own = list(argv)[1:] if argv is not None else sys.argv[2:]  # what follows "serve"
        return supervise(
            own,
            workers,
            config.host,
            Ports(config.grpc_port, config.http_port, config.metrics_port),
            devices,
        )
    import uvloop

    from ferry.server.app import serve

    if args.pin_front_end:
        from ferry.common.cpus import pin_front_end

        pin_front_end()  # before the loop and gRPC start their threads, which inherit it
    if args.gil_switch_us is not None:
        sys.setswitchinterval(args.gil_switch_us / 1e6)
    log.info("GIL switch interval %.0f µs", sys.getswitchinterval() * 1e6)
    uvloop.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
