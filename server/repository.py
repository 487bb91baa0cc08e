"""The model repository: Triton's folder layout, loaded into engines and schedulers.

    <root>/<model>/config.pbtxt            optional; derived from the model file when absent
    <root>/<model>/<version>/model.onnx    numeric version folders; the newest is served
    <root>/<model>/<version>/model.plan    a TensorRT plan (platform tensorrt_plan), on GPUs

A model that fails to load is recorded with its reason (RepositoryIndex shows it, the log says
it) and never stops the others from loading.

Models load at start, and also while serving (`load_model`, `unload_model`: the model-control
RPCs and the poller, server/model_control.py). A reload loads the new versions beside the
serving ones and moves traffic only once they are ready; requests already holding the old
versions finish there, and only then are those closed (`_retire`). A reload that fails leaves
the old versions serving and says why.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ferry.builder import manifest
from ferry.builder.manifest import PARAMETER_PREFIX
from ferry.common.errors import FerryError, ModelLoadError, ModelNotFound, ModelNotReady, shown
from ferry.common.memory import release_freed_memory
from ferry.engines.backends import default_registry
from ferry.engines.cuda.devices import Discovery, discover
from ferry.engines.loading import (
    Artifact,
    Loaded,
    PlannedInstance,
    Registry,
    VersionFiles,
    in_background,
)
from ferry.proto import model_config_pb2 as mc
from ferry.scheduler.loop_lag import LoopLag
from ferry.scheduler.observer import BatchObserver
from ferry.scheduler.scheduler import ModelScheduler
from ferry.server import model_config, scheduling_config, warmup
from ferry.server.model_config import ModelSettings

log = logging.getLogger("ferry.repository")

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
LOADING = "LOADING"
UNLOADING = "UNLOADING"

RETIRE_POLL_S = 0.01
"""How often a retiring version checks whether the requests holding it have finished."""

RETIRE_AT_STOP_S = 5.0


@dataclass
class ServedVersion:
    """One loaded model version: its settings, what its backend loaded, and its scheduler."""

    name: str
    version: str
    settings: ModelSettings
    loaded: Loaded
    scheduler: ModelScheduler
    started: float = field(default_factory=time.monotonic)
    active: int = 0  # requests holding this version (server/inference.py counts them)
    build: dict[str, str] = field(default_factory=dict)  # its manifest's summary, if built

    @property
    def sha256(self) -> str:
        """Of the model artifact: every response names it (provenance)."""
        return self.loaded.sha256


@dataclass
class ModelEntry:
    """A model folder: its loaded versions, or why it could not be loaded."""

    name: str
    state: str = UNAVAILABLE
    reason: str = ""
    versions: dict[str, ServedVersion] = field(default_factory=dict)
    requested: bool = True  # False: not loaded on purpose (explicit mode), or unloaded

    @property
    def latest(self) -> ServedVersion | None:
        if not self.versions:
            return None
        return self.versions[max(self.versions, key=int)]


@dataclass(frozen=True)
class RepositoryOptions:
    """default_max_batch_size: max_batch_size given to a model without config.pbtxt whose
    tensors all have a free first dimension (Triton's --backend-config default is 4).
    max_queue_bytes: each model's bound on queued input bytes unless its config sets one.
    loaders: the backends, by platform (engines/loading.py). discover: finds the host's GPUs.
    Tests on machines without a GPU or TensorRT hand in doubles of both (tests/doubles/)."""

    default_max_batch_size: int = 4
    max_queue_bytes: int = 0
    observers: tuple[BatchObserver, ...] = ()  # told about every batch (tracing, metrics)
    loaders: Registry = field(default_factory=default_registry)
    discover: Callable[[], Discovery] = discover
    slo_p99_ms: float | None = None  # every model's latency budget unless its config sets one
    loop_lag: LoopLag | None = None  # the serving loop's lag, for latency budgets (None: none)


class ModelRepository:
    def __init__(self, root: Path, options: RepositoryOptions = RepositoryOptions()) -> None:
        self.root = root
        self._options = options
        self._models: dict[str, ModelEntry] = {}
        self._discovery: Discovery | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self.on_change: Callable[[], Awaitable[None]] | None = None
        """Told after a model's state changed while serving (the health service follows)."""

    async def _changed(self) -> None:
        if self.on_change is not None:
            await self.on_change()

    async def _gpus(self) -> Discovery:
        """The host's GPUs, looked for once, when the first model asks for KIND_GPU."""
        if self._discovery is None:
            self._discovery = await asyncio.to_thread(self._options.discover)
        return self._discovery

    def entries(self) -> list[ModelEntry]:
        return [self._models[name] for name in sorted(self._models)]

    def served(self) -> list[ServedVersion]:
        return [v for e in self.entries() for _, v in sorted(e.versions.items())]

    def entry(self, name: str) -> ModelEntry:
        entry = self._models.get(name)
        if entry is None:
            # Triton's wording, which clients and scripts match on.
            raise ModelNotFound(f"Request for unknown model: '{shown(name)}' is not found")
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
            raise ModelNotFound(
                f"model '{name}' has no version '{shown(version)}' (served: {have})"
            )
        return served

    def folders(self) -> list[Path]:
        """The repository's model folders (hidden ones left out)."""
        if not self.root.is_dir():
            raise ModelLoadError(f"model repository {self.root} is not a directory")
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    async def load(self, names: Sequence[str] | None = None) -> None:
        """Load every model folder, or only those named (the others are listed, not loaded);
        failures are recorded, never raised."""
        for folder in self.folders():
            if names is not None and folder.name not in names:
                self._models[folder.name] = ModelEntry(
                    folder.name, reason="not loaded", requested=False
                )
                continue
            await self.load_model(folder.name, raise_errors=False)
        for name in names or ():
            if name not in self._models:
                log.error("model %s: no such folder in %s", name, self.root)

    async def load_model(
        self,
        name: str,
        config: mc.ModelConfig | None = None,
        source: Path | None = None,
        raise_errors: bool = True,
    ) -> None:
        """Load (or reload) one model: `config` replaces its config.pbtxt, `source` its folder
        (a model sent with the request). Serving versions keep serving until the new ones are
        ready; a failure leaves them serving and is raised (ModelLoadError) or recorded."""
        folder = source or self.root / name
        if not folder.is_dir():
            raise ModelNotFound(
                f"failed to load '{shown(name)}': no folder of that name in the repository"
            )
        async with self._lock(name):
            entry = self._models.get(name)
            serving = entry is not None and entry.state == READY and bool(entry.versions)
            if entry is None or not serving:
                entry = ModelEntry(name, state=LOADING, reason="loading")
                self._models[name] = entry
                await self._changed()
            versions: dict[str, ServedVersion] = {}
            try:
                versions = await self._load_model(folder, config)
                for served in versions.values():
                    await served.scheduler.start()
                    await self._warm(served, folder)
            except Exception as exc:
                for served in versions.values():  # loaded, but failed to start or warm up
                    await served.scheduler.stop()
                    for engine in served.loaded.engines:
                        engine.close()
                reason = str(exc) if isinstance(exc, FerryError) else (
                    f"unexpected error: {type(exc).__name__}: {exc}"
                )  # fmt: skip
                if not isinstance(exc, FerryError):
                    log.exception("model %s failed to load", name)
                else:
                    log.error("model %s failed to load: %s", name, reason)
                if serving:
                    entry.reason = f"reload failed, the loaded versions serve on: {reason}"
                else:
                    entry.state, entry.reason, entry.versions = UNAVAILABLE, reason, {}
                    await self._changed()
                if raise_errors:
                    if isinstance(exc, ModelLoadError) and str(exc).startswith("failed to "):
                        raise
                    raise ModelLoadError(f"failed to load '{shown(name)}': {reason}") from exc
                return
            old = entry.versions if serving else {}
            entry.versions, entry.state, entry.reason = versions, READY, ""
            for served in versions.values():
                self._describe(served)
            if old:
                self._retire(list(old.values()))
            await self._changed()

    async def unload_model(self, name: str) -> None:
        """Stop serving a model: new requests are refused at once, requests already holding it
        finish, then its instances close and their memory is released."""
        async with self._lock(name):
            entry = self._models.get(name)
            if entry is None:
                raise ModelNotFound(f"failed to unload '{shown(name)}': no such model")
            old = list(entry.versions.values())
            entry.state, entry.reason, entry.versions = UNLOADING, "unloading", {}
            entry.requested = False
            retired = self._retire(old)
        await self._changed()
        await retired
        if self._models.get(name) is entry and entry.state == UNLOADING:
            entry.state, entry.reason = UNAVAILABLE, "unloaded"

    async def _warm(self, served: ServedVersion, folder: Path) -> None:
        """Run the config's warm-up on every instance before the version serves."""
        warmups = list(served.settings.config.model_warmup)
        if not warmups:
            return
        where = str(folder / "config.pbtxt")
        entries = warmup.feeds(warmups, served.settings.signature, folder, where)
        started = time.monotonic()
        runs = await warmup.warm(served.loaded.instances, entries, where)
        log.info(
            "model %s version %s warmed up: %d run(s) on %d instance(s) in %.2f s",
            served.name,
            served.version,
            runs,
            len(served.loaded.instances),
            time.monotonic() - started,
        )

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _retire(self, versions: list[ServedVersion]) -> asyncio.Task[None]:
        """Close `versions` once no request holds them, in a task the repository owns."""

        async def retire() -> None:
            # A counter polled while retiring costs the hot path nothing (an event per request
            # would cost every request a check).
            while any(v.active for v in versions):  # noqa: ASYNC110
                await asyncio.sleep(RETIRE_POLL_S)
            for served in versions:
                await served.scheduler.stop()  # closes the instances
                for engine in served.loaded.engines:
                    engine.close()
                log.info("model %s version %s unloaded", served.name, served.version)
            versions.clear()
            # Instances sit in reference cycles (threads, executors, callbacks): a collection
            # frees their sessions now rather than whenever one next runs; with start-up objects
            # frozen (server/app.py) it walks only what was made since.
            gc.collect()
            await in_background(release_freed_memory)  # at the loading priority

        task = asyncio.create_task(retire(), name="ferry-retire")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return task

    def _describe(self, served: ServedVersion) -> None:
        settings = served.settings
        log.info(
            "model %s version %s ready: backend %s, %d instance(s), max_batch_size %d%s%s%s",
            served.name,
            served.version,
            settings.backend,
            settings.instance_count,
            settings.batching.max_batch_size,
            ", dynamic batching" if settings.batching.batched else "",
            f", {len(settings.profiles)} profiles" if settings.profiles else "",
            ", on " + ", ".join(sorted({str(i.device) for i in settings.instances})),
        )

    async def _load_model(
        self, folder: Path, override: mc.ModelConfig | None = None
    ) -> dict[str, ServedVersion]:
        where = str(folder / "config.pbtxt")
        config = override if override is not None else model_config.read(folder / "config.pbtxt")
        had_file = config is not None
        config = config or mc.ModelConfig()
        versions = versions_to_serve(folder, config)
        loaded: dict[str, ServedVersion] = {}
        try:
            for version in versions:
                loaded[version] = await self._load_version(folder, version, config, had_file, where)
        except BaseException:
            for served in loaded.values():
                await served.loaded.close()
            raise
        return loaded

    async def _load_version(
        self, folder: Path, version: str, config: mc.ModelConfig, had_file: bool, where: str
    ) -> ServedVersion:
        """Hand the version folder to its backend's loader; complete the config when the loader
        has opened the artifact (`plan`); put the instances under one scheduler."""
        files = sorted(os.listdir(folder / version))
        loader = self._options.loaders.choose(
            config.platform, config.backend, config.default_model_filename, files, where
        )
        path = folder / version / (config.default_model_filename or loader.filename)
        if not path.is_file():
            raise ModelLoadError(f"{path}: model file not found")
        parameters = {k: v.string_value for k, v in config.parameters.items()}
        source = VersionFiles(
            model=folder.name,
            version=version,
            path=path,
            where=where,
            parameters=parameters,
            instance_count=scheduling_config.instance_total(config),
            reserved=scheduling_config.count(parameters, "reserved_instances", 0, where),
            in_flight=max(1, scheduling_config.count(parameters, "in_flight", 2, where)),
            cuda_graphs=config.optimization.cuda.graphs,
        )
        completed: list[ModelSettings] = []

        async def plan(artifact: Artifact) -> tuple[Sequence[PlannedInstance], int]:
            settings = model_config.complete(
                config,
                folder.name,
                artifact,
                loader,
                had_file=had_file,
                default_max_batch_size=(
                    artifact.implied_max_batch_size or self._options.default_max_batch_size
                ),
                default_max_queue_bytes=self._options.max_queue_bytes,
                gpus=await self._gpus() if artifact.gpu_only or _wants_gpu(config) else None,
                where=where,
                folder=folder,
                default_slo_p99_ms=self._options.slo_p99_ms,
            )
            completed.append(settings)
            return settings.instances, settings.batching.max_batch_size

        loaded = await loader.load(source, plan, self._gpus)
        settings = completed[-1]
        build = await asyncio.to_thread(manifest.summary, folder / version)
        shown = settings.config.parameters
        for key in [k for k in shown if k.startswith(PARAMETER_PREFIX)]:
            del shown[key]  # a config's own claims (a copy of another ModelConfig) do not count
        for key, value in build.items():  # ModelConfig shows how the version was made
            settings.config.parameters[PARAMETER_PREFIX + key].string_value = value
        scheduler = ModelScheduler(
            f"{folder.name}:{version}",
            loaded.instances,
            settings.batching,
            padding=settings.padding,
            observers=self._options.observers,
            loop_lag=self._options.loop_lag,
        )
        return ServedVersion(folder.name, version, settings, loaded, scheduler, build=build)

    async def stop(self) -> None:
        """Close every version; versions still retiring get a moment to see their last
        requests out (the server drained before this), then are cut short."""
        if self._retiring:
            _, late = await asyncio.wait(list(self._retiring), timeout=RETIRE_AT_STOP_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        for served in self.served():
            await served.scheduler.stop()  # closes the instances
            for engine in served.loaded.engines:
                engine.close()


def versions_to_serve(folder: Path, config: mc.ModelConfig) -> list[str]:
    """The versions of a model folder its config's version policy serves (Triton's default:
    the newest one); ModelLoadError when there are none or the policy names absent ones."""
    found = sorted(_version(p) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
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


def serving_bytes(root: Path, names: Sequence[str] | None = None) -> int:
    """Bytes of the files of every version that loading the repository at `root` (only the
    models `names`, when given) would serve: what `--workers auto` weighs against the memory,
    since every worker loads them all. A folder whose config or versions do not read counts
    nothing here; loading it fails and says why."""
    total = 0
    try:
        folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return 0
    for folder in folders:
        if names is not None and folder.name not in names:
            continue
        try:
            config = model_config.read(folder / "config.pbtxt") or mc.ModelConfig()
            for version in versions_to_serve(folder, config):
                files = (folder / version).rglob("*")
                total += sum(f.stat().st_size for f in files if f.is_file())
        except (FerryError, OSError):
            continue
    return total


def _version(folder: Path) -> int:
    """A version folder's number; its name must be the number as written (`1`, not `001`): two
    spellings of one version must never both exist, and the folder a request's version names
    must be the folder served."""
    number = int(folder.name)
    if number < 1 or str(number) != folder.name:
        raise ModelLoadError(
            f"{folder}: version folder '{folder.name}' is not a version number; versions are "
            "positive integers written without leading zeros (e.g. 1, 2, 10)"
        )
    return number


def _wants_gpu(config: mc.ModelConfig) -> bool:
    kind = mc.ModelInstanceGroup.Kind.Value("KIND_GPU")
    return any(group.kind == kind for group in config.instance_group)
