"""Model control: which models load at start, and loading, reloading and unloading them while
serving, as Triton's `--model-control-mode` does.

    none      every model loads at start; the repository is not watched; load and unload
              requests are refused
    explicit  at start only the `--load-model` names load ('*': all); load and unload requests
              (RepositoryModelLoad/Unload, HTTP's /v2/repository/models/M/load|unload) do the rest
    poll      every model loads at start, and every `--repository-poll-secs` the repository is
              read again: added folders load, changed ones reload, removed ones unload

A load request may carry a config (JSON, as Triton takes it) that replaces config.pbtxt, and
files ("file:<version>/<name>" parameters with the bytes) that replace the folder: those are
written to a folder of the server's own and loaded from there. The repository
(server/repository.py) does the loading, so reloads never drop a request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import json_format

from ferry.common.errors import InvalidInput, ModelLoadError, Unavailable, shown
from ferry.proto import model_config_pb2 as mc
from ferry.server import model_config
from ferry.server.repository import ModelRepository

log = logging.getLogger("ferry.repository")

MODES = ("none", "explicit", "poll")
NAME_MAX = 255
"""The longest file-name component a file override may have (Linux's NAME_MAX)."""


@dataclass(frozen=True)
class LoadRequest:
    """What a load request carries besides the model's name, whatever the protocol."""

    config: str | None = None  # JSON of a ModelConfig
    files: Mapping[str, bytes] = field(default_factory=dict)  # "<version>/<name>" -> bytes


def fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Every file under a model folder with its modification time and size: what a poll
    compares to find changed models."""
    found = []
    for directory, _, files in os.walk(folder):
        for name in files:
            path = Path(directory) / name
            try:
                status = path.stat()
            except OSError:
                continue
            found.append((str(path.relative_to(folder)), status.st_mtime_ns, status.st_size))
    return tuple(sorted(found))


def loaded_at_start(mode: str, load_models: Sequence[str]) -> list[str] | None:
    """The models a server loads at start: every folder (None), or in explicit mode only those
    named by --load-model ("*" names them all)."""
    if mode == "explicit" and "*" not in load_models:
        return list(load_models)
    return None


class ModelControl:
    """The server's model-control mode over its repository; owns the poller and the folders
    of models sent with their files."""

    def __init__(
        self,
        repository: ModelRepository,
        mode: str = "none",
        load_models: Sequence[str] = (),
        poll_secs: float = 15.0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"model control mode must be one of {MODES}, got {mode!r}")
        self._repository = repository
        self.mode = mode
        self._load_models = tuple(load_models)
        self._poll_secs = poll_secs
        self._poller: asyncio.Task[None] | None = None
        self._seen: dict[str, tuple[tuple[str, int, int], ...]] = {}
        self._sent: dict[str, Path] = {}  # model -> folder written from a load request

    async def start(self) -> None:
        """Load what the mode loads at start; in poll mode, start watching."""
        await self._repository.load(loaded_at_start(self.mode, self._load_models))
        if self.mode == "poll":
            self._seen = await asyncio.to_thread(self._scan)
            self._poller = asyncio.create_task(self._poll(), name="ferry-repository-poll")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        for folder in self._sent.values():
            shutil.rmtree(folder.parent, ignore_errors=True)

    # ---- requests ----------------------------------------------------------------------------

    async def load(self, name: str, request: LoadRequest) -> None:
        self._allowed()
        config = None
        if request.config is not None:
            config = mc.ModelConfig()
            try:
                json_format.Parse(request.config, config)
            except json_format.ParseError as exc:
                raise ModelLoadError(
                    f"failed to load '{shown(name)}': the config override is not a valid model "
                    f"config in JSON: {exc}"
                ) from None
            model_config.check(config, f"the config override of '{name}'")
        source = None
        if request.files:
            if config is None:
                raise InvalidInput(
                    f"failed to load '{shown(name)}': files sent with a load request need a "
                    "config sent with them (parameter 'config')"
                )
            source = await asyncio.to_thread(self._write, name, request.files)
        try:
            await self._repository.load_model(name, config, source)
        except BaseException:
            if source is not None:
                shutil.rmtree(source.parent, ignore_errors=True)
            raise
        previous = self._sent.pop(name, None)
        if source is not None:
            self._sent[name] = source
        if previous is not None and previous != source:
            shutil.rmtree(previous.parent, ignore_errors=True)

    async def unload(self, name: str) -> None:
        self._allowed()
        await self._repository.unload_model(name)
        sent = self._sent.pop(name, None)
        if sent is not None:
            shutil.rmtree(sent.parent, ignore_errors=True)

    def _allowed(self) -> None:
        if self.mode != "explicit":
            raise Unavailable(
                f"explicit model load / unload is not allowed in model control mode "
                f"'{self.mode}' (start the server with --model-control-mode explicit)"
            )

    def _write(self, name: str, files: Mapping[str, bytes]) -> Path:
        """The sent files as a model folder of their own; every path checked first."""
        for path in files:
            parts = Path(path).parts
            if any(len(part.encode()) > NAME_MAX for part in parts):
                raise ModelLoadError(
                    "failed to poll from model repository: a file name in the load request is "
                    f"longer than {NAME_MAX} bytes"
                )
            if Path(path).is_absolute() or not parts or any(p in ("..", ".") for p in parts):
                raise InvalidInput(
                    f"failed to load '{shown(name)}': file '{shown(path)}' must be a path inside "
                    "the model folder (e.g. 1/model.onnx)"
                )
        root = Path(tempfile.mkdtemp(prefix="ferry-sent-model-"))
        folder = root / name
        for path, data in files.items():
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return folder

    # ---- poll mode ---------------------------------------------------------------------------

    def _scan(self) -> dict[str, tuple[tuple[str, int, int], ...]]:
        return {folder.name: fingerprint(folder) for folder in self._repository.folders()}

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_secs)
            try:
                await self.poll_once()
            except Exception:  # a poll that fails must not end polling
                log.exception("repository poll failed")

    async def poll_once(self) -> None:
        """Compare the repository with the last look: load added and changed models, unload
        removed ones."""
        now = await asyncio.to_thread(self._scan)
        for name in sorted(now):
            if self._seen.get(name) != now[name]:
                log.info("repository poll: model %s %s", name,
                         "changed" if name in self._seen else "added")  # fmt: skip
                await self._repository.load_model(name, raise_errors=False)
        for name in sorted(set(self._seen) - set(now)):
            log.info("repository poll: model %s removed", name)
            await self._repository.unload_model(name)
        self._seen = now
