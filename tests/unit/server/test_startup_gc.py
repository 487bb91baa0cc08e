"""A started server keeps its start-up objects out of the garbage collector's full collections,
which otherwise walked all of them with the event loop stopped (see server/app.py)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from ferry.server.app import FerryServer
from ferry.server.config import ServerConfig


@pytest.mark.asyncio
async def test_start_up_objects_are_frozen_out_of_full_collections(model_repo: Path) -> None:
    gc.unfreeze()
    server = FerryServer(
        ServerConfig(model_repo, grpc_port=0, metrics_port=-1, strict_readiness=False)
    )
    await server.start()
    try:
        frozen = gc.get_freeze_count()
        tracked = len(gc.get_objects())  # what a full collection would walk now
        assert frozen > 10_000  # modules, models, sessions: what lives as long as the server
        assert tracked < frozen // 10
    finally:
        await server.stop(0)
        gc.unfreeze()
