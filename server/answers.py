"""What the server says about itself and its models, as protocol messages both front ends send:
the gRPC servicer returns them as they are, the HTTP routes as JSON (server/http/json_form.py).

One builder per question, so that the two protocols cannot drift apart.
"""

from __future__ import annotations

import ferry
from ferry.common.errors import FerryError, ModelNotFound, shown
from ferry.proto import grpc_service_pb2 as pb
from ferry.scheduler.stats import Duration, ModelStats
from ferry.server.readiness import ReadinessState
from ferry.server.repository import ModelRepository, ServedVersion
from ferry.server.shared_memory import SharedMemoryRegistry

SERVER_NAME = "triton"
"""The name clients check (Triton's own examples refuse any other); the version is Ferry's
(docs/compatibility.md lists where Ferry differs from Triton on purpose)."""
SERVER_VERSION = ferry.__version__  # from the installed package's metadata
EXTENSIONS = (
    "classification",
    "model_configuration",
    "system_shared_memory",
    "statistics",
    "binary_tensor_data",
    "parameters",
)
"""What Ferry serves, in Triton's names: clients and perf_analyzer read this list."""


def server_metadata() -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(
        name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS
    )


def model_ready(
    repository: ModelRepository, readiness: ReadinessState, name: str, version: str
) -> bool:
    try:
        served = repository.get(name, version)
    except FerryError:  # unknown, or known but not loaded: not ready (as Triton answers)
        return False
    return served.scheduler.healthy and not readiness.draining


def model_metadata(
    repository: ModelRepository, name: str, version: str
) -> pb.ModelMetadataResponse:
    served = repository.get(name, version)
    settings = served.settings
    sig = settings.signature
    batch = [-1] if sig.max_batch_size > 0 else []
    entry = repository.entry(served.name)
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


def model_config(repository: ModelRepository, name: str, version: str) -> pb.ModelConfigResponse:
    return pb.ModelConfigResponse(config=repository.get(name, version).settings.config)


def model_statistics(
    repository: ModelRepository, name: str, version: str
) -> pb.ModelStatisticsResponse:
    """Every served version's statistics; those of one model, or one version, when named."""
    if name:
        served = repository.get(name, version)
        chosen = [served] if version else [v for v in repository.served() if v.name == name]
    else:
        chosen = repository.served()
    return pb.ModelStatisticsResponse(model_stats=[_statistics(v) for v in chosen])


def repository_index(
    repository: ModelRepository, repository_name: str, ready_only: bool
) -> pb.RepositoryIndexResponse:
    one_repository(repository_name)
    models: list[pb.RepositoryIndexResponse.ModelIndex] = []
    for entry in repository.entries():
        if entry.versions:
            models.extend(
                pb.RepositoryIndexResponse.ModelIndex(
                    name=entry.name, version=version, state=entry.state, reason=entry.reason
                )
                for version in sorted(entry.versions, key=int)
            )
        elif not ready_only:
            models.append(
                pb.RepositoryIndexResponse.ModelIndex(
                    name=entry.name, state=entry.state, reason=entry.reason
                )
            )
    return pb.RepositoryIndexResponse(models=models)


def one_repository(name: str) -> None:
    """Requests may name a repository; Ferry serves one, unnamed."""
    if name:
        raise ModelNotFound(f"unknown repository '{shown(name)}' (Ferry serves one, unnamed)")


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


def system_shared_memory_status(
    regions: SharedMemoryRegistry, name: str
) -> pb.SystemSharedMemoryStatusResponse:
    response = pb.SystemSharedMemoryStatusResponse()
    for region in regions.status(name):
        response.regions[region.name].CopyFrom(
            pb.SystemSharedMemoryStatusResponse.RegionStatus(
                name=region.name, key=region.key, offset=region.offset, byte_size=region.byte_size
            )
        )
    return response
