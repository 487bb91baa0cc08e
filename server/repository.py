"""The model repository: Triton's folder layout, loaded into engines and schedulers.

    <root>/<model>/config.pbtxt            optional; derived from the model file when absent
    <root>/<model>/<version>/model.onnx    numeric version folders; the newest is served
    <root>/<model>/<version>/model.plan    a TensorRT plan (platform tensorrt_plan), on GPUs

A model that fails to load is recorded with its reason (RepositoryIndex shows it, the log says
it) and never stops the others from loading.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ferry.common.cpus import usable_cpus
from ferry.common.errors import FerryError, ModelLoadError, ModelNotFound, ModelNotReady
from ferry.engines.base import Engine
from ferry.engines.cuda import toolkit
from ferry.engines.cuda.devices import Discovery, discover
from ferry.engines.cuda.toolkit import CudaToolkit
from ferry.engines.onnxruntime import (
    RESERVED_INLINE_BUDGET_NS,
    OnnxRuntimeEngine,
    options_from_parameters,
)
from ferry.engines.tensorrt.engine import TensorRTEngine, TensorRTOptions
from ferry.engines.tensorrt.runtime import import_tensorrt
from ferry.proto import model_config_pb2 as mc
from ferry.scheduler.observer import BatchObserver
from ferry.scheduler.runner import reserved_positions
from ferry.scheduler.scheduler import ModelScheduler
from ferry.server import model_config, scheduling_config
from ferry.server.model_config import TENSORRT, ModelSettings

log = logging.getLogger("ferry.repository")

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"


@dataclass
class ServedVersion:
    """One loaded model version: its settings, engine and scheduler."""

    name: str
    version: str
    settings: ModelSettings
    engine: Engine
    scheduler: ModelScheduler
    sha256: str = ""  # of the model artifact: every response names it (provenance)
    started: float = field(default_factory=time.monotonic)


@dataclass
class ModelEntry:
    """A model folder: its loaded versions, or why it could not be loaded."""

    name: str
    state: str = UNAVAILABLE
    reason: str = ""
    versions: dict[str, ServedVersion] = field(default_factory=dict)

    @property
    def latest(self) -> ServedVersion | None:
        if not self.versions:
            return None
        return self.versions[max(self.versions, key=int)]


@dataclass(frozen=True)
class Backends:
    """Where the GPU side comes from: the host's GPUs, TensorRT, CUDA. The real ones by
    default; tests on machines without GPU or TensorRT hand in doubles (tests/doubles/)."""

    discover: Callable[[], Discovery] = discover
    tensorrt: Callable[[], Any] = import_tensorrt
    cuda: Callable[[], CudaToolkit] = toolkit.real


@dataclass(frozen=True)
class RepositoryOptions:
    """default_max_batch_size: max_batch_size given to a model without config.pbtxt whose
    tensors all have a free first dimension (Triton's --backend-config default is 4).
    max_queue_bytes: each model's bound on queued input bytes unless its config sets one."""

    default_max_batch_size: int = 4
    max_queue_bytes: int = 0
    observers: tuple[BatchObserver, ...] = ()  # told about every batch (tracing, metrics)
    backends: Backends = Backends()


class ModelRepository:
    def __init__(self, root: Path, options: RepositoryOptions = RepositoryOptions()) -> None:
        self.root = root
        self._options = options
        self._models: dict[str, ModelEntry] = {}
        self._discovery: Discovery | None = None

    async def _gpus(self) -> Discovery:
        """The host's GPUs, looked for once, when the first model asks for KIND_GPU."""
        if self._discovery is None:
            self._discovery = await asyncio.to_thread(self._options.backends.discover)
        return self._discovery

    def entries(self) -> list[ModelEntry]:
        return [self._models[name] for name in sorted(self._models)]

    def served(self) -> list[ServedVersion]:
        return [v for e in self.entries() for _, v in sorted(e.versions.items())]

    def entry(self, name: str) -> ModelEntry:
        entry = self._models.get(name)
        if entry is None:
            raise ModelNotFound(f"unknown model '{name}'")
        return entry

    def get(self, name: str, version: str = "") -> ServedVersion:
        """The served version for a request; ModelNotFound/ModelNotReady say precisely why not."""
        entry = self.entry(name)
        if entry.state != READY:
            raise ModelNotReady(f"model '{name}' is not ready: {entry.reason}")
        if not version:
            served = entry.latest
            assert served is not None
            return served
        served = entry.versions.get(version)
        if served is None:
            have = ", ".join(sorted(entry.versions, key=int))
            raise ModelNotFound(f"model '{name}' has no version '{version}' (served: {have})")
        return served

    async def load(self) -> None:
        """Load every model folder; failures are recorded, never raised."""
        if not self.root.is_dir():
            raise ModelLoadError(f"model repository {self.root} is not a directory")
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if folder.name.startswith("."):
                continue
            entry = ModelEntry(folder.name)
            self._models[folder.name] = entry
            try:
                entry.versions = await self._load_model(folder)
            except FerryError as exc:
                entry.reason = str(exc)
                log.error("model %s failed to load: %s", folder.name, exc)
                continue
            except Exception as exc:  # a bug or a library error: still never stop the others
                entry.reason = f"unexpected error: {type(exc).__name__}: {exc}"
                log.exception("model %s failed to load", folder.name)
                continue
            entry.state = READY
            for served in entry.versions.values():
                await served.scheduler.start()
                settings = served.settings
                log.info(
                    "model %s version %s ready: backend %s, %d instance(s), "
                    "max_batch_size %d%s%s%s",
                    served.name,
                    served.version,
                    settings.backend,
                    settings.instance_count,
                    settings.batching.max_batch_size,
                    ", dynamic batching" if settings.batching.batched else "",
                    f", {len(settings.profiles)} profiles" if settings.profiles else "",
                    ", on " + ", ".join(sorted({str(i.device) for i in settings.instances})),
                )

    async def _load_model(self, folder: Path) -> dict[str, ServedVersion]:
        where = str(folder / "config.pbtxt")
        config = model_config.read(folder / "config.pbtxt")
        had_file = config is not None
        config = config or mc.ModelConfig()
        versions = self._versions(folder, config)
        loaded: dict[str, ServedVersion] = {}
        try:
            for version in versions:
                loaded[version] = await self._load_version(folder, version, config, had_file, where)
        except BaseException:
            for served in loaded.values():
                served.engine.close()
            raise
        return loaded

    def _versions(self, folder: Path, config: mc.ModelConfig) -> list[str]:
        found = sorted(
            (int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()),
        )
        if not found:
            raise ModelLoadError(f"{folder}: no numeric version folder (e.g. {folder}/1)")
        policy = config.version_policy
        choice = policy.WhichOneof("policy_choice")
        if choice == "all":
            chosen = found
        elif choice == "specific":
            wanted = list(policy.specific.versions)
            absent = [v for v in wanted if v not in found]
            if absent:
                raise ModelLoadError(f"{folder}: version_policy names missing version(s) {absent}")
            chosen = sorted(wanted)
        else:
            count = policy.latest.num_versions if choice == "latest" else 1
            chosen = found[-max(count, 1) :]
        return [str(v) for v in chosen]

    async def _load_version(
        self, folder: Path, version: str, config: mc.ModelConfig, had_file: bool, where: str
    ) -> ServedVersion:
        version_dir = folder / version
        files = sorted(os.listdir(version_dir))
        backend = model_config.backend_of(config, files, where)
        path = version_dir / model_config.model_filename(config, backend)
        if not path.is_file():
            raise ModelLoadError(f"{path}: model file not found")
        if backend == TENSORRT:
            return await self._load_plan(folder, version, path, config, had_file, where)
        parameters = {k: v.string_value for k, v in config.parameters.items()}
        count = scheduling_config.instance_total(config)
        reserved = scheduling_config.count(parameters, "reserved_instances", 0, where)
        chosen_threads = "intra_op_thread_count" in parameters
        if not chosen_threads:
            # N instances share the usable cores (the process's affinity, not the host's)
            # instead of each spawning a thread per core. With a reservation, reserved
            # instances take one thread each (below) and the others share the cores but one:
            # that core is left to the event loop, gRPC and the reserved instances. The idle
            # class alone did not keep them waiting less: on a 2-core VM, high-priority p99
            # loaded / alone was ~3.0 with two background threads, 1.97 with one.
            general = max(1, count - reserved)
            cores = usable_cpus() - (1 if reserved else 0)
            parameters["intra_op_thread_count"] = str(max(1, cores // general))
        options = replace(
            options_from_parameters(parameters),
            in_flight=max(1, scheduling_config.count(parameters, "in_flight", 2, where)),
        )
        digest = await asyncio.to_thread(_sha256, path)
        engine = await asyncio.to_thread(OnnxRuntimeEngine, path, options)
        gpu_engine: Engine | None = None
        instances: list[Any] = []
        try:
            settings = model_config.complete(
                config,
                folder.name,
                engine.inputs,
                engine.outputs,
                backend=backend,
                had_file=had_file,
                default_max_batch_size=self._options.default_max_batch_size,
                default_max_queue_bytes=self._options.max_queue_bytes,
                gpus=await self._gpus() if _wants_gpu(config) else None,
                where=where,
            )
            graphs = config.optimization.cuda.graphs
            if graphs and any(p.device.kind != "gpu" for p in settings.instances):
                raise ModelLoadError(
                    f"{where}: optimization.cuda.graphs needs GPU instances (KIND_GPU); "
                    "this model has CPU instances"
                )
            # A reserved CPU instance runs small high-priority batches: on one thread it never
            # waits for a straggler among threads the busy instances crowd out; at the event
            # loop's OS priority, and on the loop itself when a batch is cheap enough, it is not
            # crowded out by the unreserved instances, whose threads run in the idle class.
            kept = reserved_positions([p.profile.index for p in settings.instances], reserved)
            for i, planned in enumerate(settings.instances):
                name = f"{folder.name}_{version}_{i}"
                maker: Engine = engine
                extra: dict[str, Any] = {}
                if planned.device.kind == "cpu" and i in kept:
                    extra = {"nice": 0, "inline_budget_ns": RESERVED_INLINE_BUDGET_NS}
                    if not chosen_threads:
                        extra["threads"] = 1
                elif planned.device.kind == "cpu" and kept:
                    extra = {"idle_class": True}
                if planned.device.kind == "gpu":
                    if gpu_engine is None:
                        from ferry.engines.onnxruntime_cuda import OnnxRuntimeCudaEngine

                        gpu_engine = await asyncio.to_thread(
                            OnnxRuntimeCudaEngine,
                            path,
                            replace(options, cuda_graphs=graphs),
                            settings.batching.max_batch_size,
                        )
                    maker = gpu_engine
                instances.append(
                    await asyncio.to_thread(
                        functools.partial(
                            maker.create_instance, name, planned.device, planned.profile, **extra
                        )
                    )
                )
        except BaseException:
            for made in instances:
                await made.close()
            engine.close()
            if gpu_engine is not None:
                gpu_engine.close()
            raise
        return self._served(folder.name, version, settings, engine, instances, digest)

    async def _load_plan(
        self,
        folder: Path,
        version: str,
        path: Path,
        config: mc.ModelConfig,
        had_file: bool,
        where: str,
    ) -> ServedVersion:
        """A TensorRT plan: GPUs first (TensorRT must never start without one), then the plan,
        deserialized on the first GPU, then its instances, each on its profile and GPU."""
        gpus = await self._gpus()
        ordinals = sorted(d.ordinal for d in gpus.devices if d.ordinal >= 0)
        if not ordinals:
            raise ModelLoadError(
                f"{path}: a TensorRT plan needs a GPU, and this process has none usable: "
                f"{gpus.reason or 'MIG instances need --workers gpu'}"
            )
        parameters = {k: v.string_value for k, v in config.parameters.items()}
        options = TensorRTOptions(
            cuda_graphs=config.optimization.cuda.graphs,
            in_flight=max(1, scheduling_config.count(parameters, "in_flight", 2, where)),
        )
        backends = self._options.backends
        digest = await asyncio.to_thread(_sha256, path)
        engine = await asyncio.to_thread(
            TensorRTEngine,
            path,
            ordinals,
            options,
            trt=await asyncio.to_thread(backends.tensorrt),
            cuda=backends.cuda(),
        )
        instances: list[Any] = []
        try:
            implied = 0
            if engine.batch_major:
                implied = max((p.max_rows for p in engine.profiles_for(True)), default=0)
            settings = model_config.complete(
                config,
                folder.name,
                engine.inputs,
                engine.outputs,
                backend=TENSORRT,
                had_file=had_file,
                default_max_batch_size=implied,
                default_max_queue_bytes=self._options.max_queue_bytes,
                gpus=gpus,
                engine_profiles=engine.profiles_for,
                where=where,
            )
            for i, planned in enumerate(settings.instances):
                instances.append(
                    await asyncio.to_thread(
                        engine.create_instance,
                        f"{folder.name}_{version}_{i}",
                        planned.device,
                        planned.profile,
                    )
                )
        except BaseException:
            for made in instances:
                await made.close()
            engine.close()
            raise
        return self._served(folder.name, version, settings, engine, instances, digest)

    def _served(
        self,
        name: str,
        version: str,
        settings: ModelSettings,
        engine: Engine,
        instances: list[Any],
        digest: str,
    ) -> ServedVersion:
        """A loaded version: its instances under one scheduler."""
        scheduler = ModelScheduler(
            f"{name}:{version}",
            instances,
            settings.batching,
            padding=settings.padding,
            observers=self._options.observers,
        )
        return ServedVersion(name, version, settings, engine, scheduler, digest)

    async def stop(self) -> None:
        for served in self.served():
            await served.scheduler.stop()
            served.engine.close()


def _sha256(path: Path) -> str:
    """Hex sha256 of a model artifact, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _wants_gpu(config: mc.ModelConfig) -> bool:
    kind = mc.ModelInstanceGroup.Kind.Value("KIND_GPU")
    return any(group.kind == kind for group in config.instance_group)
