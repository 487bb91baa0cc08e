"""The shared-memory registry's guards: bare POSIX names only (no paths, no links), bounds
checked at registration and at every use, and limits on regions and mapped bytes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.common.errors import AlreadyExists, InvalidInput, LimitExceeded
from ferry.server.shared_memory import SHM_ROOT, SharedMemoryRegistry


@pytest.fixture
def keys() -> Iterator[list[str]]:
    """Three 4 KiB shared-memory objects; removed afterwards."""
    made = []
    for _ in range(3):
        key = f"/ferry_unit_{uuid.uuid4().hex[:10]}"
        (SHM_ROOT / key[1:]).write_bytes(bytes(4096))
        made.append(key)
    yield made
    for key in made:
        (SHM_ROOT / key[1:]).unlink(missing_ok=True)


def test_a_region_is_a_window_of_its_object(keys: list[str]) -> None:
    registry = SharedMemoryRegistry()
    registry.register("r", keys[0], 1000, 96)
    (SHM_ROOT / keys[0][1:]).write_bytes(b"\1" * 1000 + b"\2" * 96 + b"\3" * 3000)
    region = registry.get("r")
    assert bytes(region.slice(0, 96, "input 'x'")) == b"\2" * 96
    with pytest.raises(InvalidInput, match="lies outside shared memory region 'r'"):
        region.slice(1, 96, "input 'x'")


@pytest.mark.parametrize("key", ["/a/b", "../x", "..", "/..", "", "a" * 300, "/dev/shm/x", "x y"])
def test_keys_that_are_not_bare_names_are_refused(key: str) -> None:
    with pytest.raises(InvalidInput, match="not a POSIX shared memory name"):
        SharedMemoryRegistry().register("r", key, 0, 8)


def test_a_link_in_the_shared_memory_folder_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(bytes(64))
    link = SHM_ROOT / f"ferry_unit_link_{uuid.uuid4().hex[:8]}"
    os.symlink(target, link)
    try:
        with pytest.raises(InvalidInput, match="unable to open shared memory key"):
            SharedMemoryRegistry().register("r", f"/{link.name}", 0, 8)
    finally:
        link.unlink()


def test_limits_on_regions_and_bytes(keys: list[str]) -> None:
    by_count = SharedMemoryRegistry(max_regions=2)
    by_count.register("a", keys[0], 0, 8)
    by_count.register("b", keys[1], 0, 8)
    with pytest.raises(LimitExceeded, match="holds 2 shared memory regions"):
        by_count.register("c", keys[2], 0, 8)
    by_count.unregister("a")
    by_count.register("c", keys[2], 0, 8)  # room again

    by_bytes = SharedMemoryRegistry(max_bytes=6000)
    by_bytes.register("a", keys[0], 0, 4096)
    with pytest.raises(LimitExceeded, match="would pass the 6000 bytes"):
        by_bytes.register("b", keys[1], 0, 4096)
    assert by_bytes.mapped_bytes == 4096


def test_names_are_unique_until_unregistered(keys: list[str]) -> None:
    registry = SharedMemoryRegistry()
    registry.register("r", keys[0], 0, 8)
    with pytest.raises(AlreadyExists):
        registry.register("r", keys[1], 0, 8)
    registry.unregister()
    registry.register("r", keys[1], 0, 8)
    assert [r.key for r in registry.status()] == [keys[1]]


def test_a_view_outlives_its_unregistered_region(keys: list[str]) -> None:
    registry = SharedMemoryRegistry()
    registry.register("r", keys[0], 0, 16)
    view = registry.get("r").slice(0, 16, "input 'x'")
    registry.unregister("r")
    assert bytes(view) == bytes(16)  # still mapped: a running batch may read it
