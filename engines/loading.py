"""How a backend turns one model version folder into instances, and the registry that picks it.

The repository (server/repository.py) knows folders, versions, config.pbtxt and lifecycle; a
backend knows its artifact. Between them:

    repository                                 loader (one per backend, chosen by platform)
    ──────────                                 ──────
    VersionFiles (artifact path, parameters) ─► open the artifact: its tensors, its profiles
    complete the config from the Artifact    ◄─ Artifact
    the planned instances (profile, device)  ─► make each instance; close what it made on error
                                             ◄─ Loaded (engines, instances, sha256)

The loader calls the repository back (`plan`) between opening the artifact and making
instances, so that the config is completed from the real file and every backend decision stays
in the backend: thread counts, GPU engines, what a reserved instance gets.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from ferry.common.cpus import widen_to_compute
from ferry.common.errors import ModelLoadError
from ferry.engines.base import Device, Engine, Instance, Profile, TensorSpec
from ferry.engines.cuda.devices import Discovery


@dataclass(frozen=True)
class PlannedInstance:
    """One instance the config asks for: its profile and device, and whether it is reserved
    for the highest priority level (its backend may give it resources of its own)."""

    profile: Profile
    device: Device
    reserved: bool = False


@dataclass(frozen=True)
class VersionFiles:
    """One model version as its backend reads it.

    path: the artifact (model.onnx, model.plan, ...). parameters: config.pbtxt `parameters`.
    where: what messages name (the config's path). instance_count, reserved: how many instances
    the config asks for and how many of them are reserved, known before the artifact is open
    (a backend may size its thread pools from them). in_flight: batches one GPU instance holds.
    """

    model: str
    version: str
    path: Path
    where: str
    parameters: Mapping[str, str] = field(default_factory=dict)
    instance_count: int = 1
    reserved: int = 0
    in_flight: int = 2
    cuda_graphs: bool = False


@dataclass(frozen=True)
class Artifact:
    """What completing the config needs from an opened artifact.

    inputs, outputs: the file's own tensors, batch dimension included. own_profiles: the
    optimization profiles the artifact itself carries (a TensorRT plan), given whether the model
    batches; None when it carries none. implied_max_batch_size: max_batch_size for a model
    without config.pbtxt (0: the server's default). gpu_only: KIND_AUTO means the GPU.
    """

    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]
    own_profiles: Callable[[bool], Sequence[Profile]] | None = None
    implied_max_batch_size: int = 0
    gpu_only: bool = False


Planner = Callable[[Artifact], Awaitable[tuple[Sequence[PlannedInstance], int]]]
"""The repository's half: complete the config from the artifact; answer the planned instances
and the model's max_batch_size. Raises ModelLoadError when the two do not fit."""

GpuLookup = Callable[[], Awaitable[Discovery]]
"""The host's GPUs, looked for once per repository."""


@dataclass
class Loaded:
    """A loaded version's backend side. `engines`: every engine the loader opened (closed when
    the version is unloaded); `instances`: in the planned order."""

    engines: list[Engine]
    instances: list[Instance]
    sha256: str

    async def close(self) -> None:
        for instance in self.instances:
            await instance.close()
        for engine in self.engines:
            engine.close()


class Loader(Protocol):
    """One backend's way from a version folder to instances."""

    @property
    def platform(self) -> str:
        """Triton's platform name the backend serves (`onnxruntime_onnx`, `tensorrt_plan`)."""
        ...

    @property
    def backend(self) -> str:
        """Triton's backend name for the same (`onnxruntime`, `tensorrt`)."""
        ...

    @property
    def filename(self) -> str:
        """The artifact's default file name in a version folder."""
        ...

    @property
    def utf8_bytes(self) -> bool:
        """BYTES tensors must be valid UTF-8 (the backend hands them over as strings)."""
        ...

    async def load(self, files: VersionFiles, plan: Planner, gpus: GpuLookup) -> Loaded: ...


class Registry:
    """The loaders a server knows, found by Triton's platform or backend name."""

    def __init__(self, loaders: Sequence[Loader]) -> None:
        self._by_backend = {loader.backend: loader for loader in loaders}
        self._by_platform = {loader.platform: loader for loader in loaders}

    @property
    def loaders(self) -> Sequence[Loader]:
        return tuple(self._by_backend.values())

    def choose(
        self, platform: str, backend: str, filename: str, files: Sequence[str], where: str
    ) -> Loader:
        """The loader for a config's `platform`/`backend`, else for the artifact the version
        folder (`files`) ships: the config's `default_model_filename`, or a loader's own."""
        if platform and platform not in self._by_platform:
            raise ModelLoadError(f"{where}: platform '{platform}' is not supported")
        if backend and backend not in self._by_backend:
            raise ModelLoadError(f"{where}: backend '{backend}' is not supported")
        by_platform = self._by_platform.get(platform)
        by_backend = self._by_backend.get(backend)
        if by_platform is not None and by_backend is not None and by_platform is not by_backend:
            raise ModelLoadError(f"{where}: platform '{platform}' and backend '{backend}' disagree")
        chosen = by_platform or by_backend
        if chosen is not None:
            return chosen
        for loader in self._by_backend.values():
            if (filename or loader.filename) in files:
                return loader
        names = ", ".join(loader.filename for loader in self._by_backend.values())
        raise ModelLoadError(f"{where}: no platform or backend given and no model file ({names})")


LOADING_NICE = 19
"""How much lower than the event loop's the priority of the thread that opens models is: the
lowest nice, well under the instances' compute threads (nice 10), so that a model loading while
the server serves (a reload) takes little of the CPU the requests need. Not SCHED_IDLE: on a
server busy to the last cycle a load must still finish."""

T = TypeVar("T")
_background: ThreadPoolExecutor | None = None


def _lower(nice: int) -> None:
    widen_to_compute()  # off the front end's CPU (common/cpus.py): sessions opened here compute
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + nice, 19))
    except (OSError, AttributeError):
        pass  # not permitted (or not Linux): load at normal priority


async def in_background(fn: Callable[..., T], *args: object) -> T:
    """Run a blocking, CPU-heavy loading step (opening a model) on the loading thread: one
    thread, at low priority, for the process's lifetime (a daemon thread)."""
    global _background
    if _background is None:
        _background = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="ferry-loading",
            initializer=_lower,
            initargs=(LOADING_NICE,),
        )
    return await asyncio.get_running_loop().run_in_executor(_background, fn, *args)
