"""System shared memory: regions a client on the same host registers, so that tensors travel
through memory both processes map instead of through the message.

A region is a POSIX shared-memory object (a key such as "/input0", under /dev/shm), a byte
offset into it and a size. Registering maps the object once; an input that names a region is
decoded as a view into that mapping (no copy through protobuf or the HTTP body), and an output
that names one is written straight into it.

Safety: keys are bare POSIX names, never paths; offsets and sizes are checked against the
object's size at registration and every use against the region's bounds. A region unregistered
while a request still reads or writes it stays mapped until the last view of it is gone: views
hold the mapping (Python's mmap cannot be unmapped while a buffer exports it), so nothing is
unmapped under a running batch. The number of regions and the bytes they map are bounded.
"""

from __future__ import annotations

import mmap
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ferry.common.errors import AlreadyExists, InvalidInput, LimitExceeded, shown
from ferry.proto import grpc_service_pb2 as pb
from ferry.server.codec import Buffer

SHM_ROOT = Path("/dev/shm")
KEY = re.compile(r"/?[A-Za-z0-9._-]{1,200}")
"""A POSIX shared-memory name: one optional leading slash, then no slash at all."""

DEFAULT_MAX_REGIONS = 1024
DEFAULT_MAX_BYTES = 64 * 1024**3
"""Bytes the registered regions may map in all: address space, not memory (pages are the
client's), bounded so that a caller cannot exhaust the server's mappings."""

REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"


@dataclass(frozen=True)
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    view: memoryview  # the region's bytes within the mapping

    def slice(self, offset: int, size: int, what: str) -> memoryview:
        if offset < 0 or size < 0 or offset + size > self.byte_size:
            raise InvalidInput(
                f"{what}: offset {offset} + {size} bytes lies outside shared memory region "
                f"'{self.name}' ({self.byte_size} bytes)"
            )
        return self.view[offset : offset + size]


class SharedMemoryRegistry:
    """The server's registered regions. Event loop only (no locking)."""

    def __init__(
        self, max_regions: int = DEFAULT_MAX_REGIONS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self._regions: dict[str, Region] = {}
        self._max_regions = max_regions
        self._max_bytes = max_bytes

    @property
    def mapped_bytes(self) -> int:
        return sum(r.byte_size for r in self._regions.values())

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name:
            raise InvalidInput("a shared memory region needs a name")
        if name in self._regions:
            raise AlreadyExists(f"shared memory region '{shown(name)}' is already registered")
        if KEY.fullmatch(key) is None or key.strip("/") in (".", ".."):
            raise InvalidInput(
                f"shared memory key '{shown(key)}' is not a POSIX shared memory name "
                "(an optional leading '/', then letters, digits, '.', '_' or '-'; no paths)"
            )
        if offset < 0 or byte_size <= 0:
            raise InvalidInput(
                f"region '{shown(name)}': offset must be >= 0 and byte_size > 0, got offset "
                f"{offset}, byte_size {byte_size}"
            )
        if len(self._regions) >= self._max_regions:
            raise LimitExceeded(
                f"the server holds {len(self._regions)} shared memory regions, its limit; "
                "unregister some first"
            )
        if self.mapped_bytes + byte_size > self._max_bytes:
            raise LimitExceeded(
                f"registering {byte_size} bytes would pass the {self._max_bytes} bytes the "
                f"server maps for shared memory ({self.mapped_bytes} registered)"
            )
        path = SHM_ROOT / key.lstrip("/")
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError as exc:
            raise InvalidInput(
                f"unable to open shared memory key '{shown(key)}' for region '{shown(name)}': "
                f"{exc.strerror}"
            ) from None
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise InvalidInput(
                    f"region '{shown(name)}': offset {offset} + byte_size {byte_size} passes the "
                    f"end of shared memory key '{shown(key)}' ({size} bytes)"
                )
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        view = memoryview(mapping)[offset : offset + byte_size]
        self._regions[name] = Region(name, key, offset, byte_size, view)

    def unregister(self, name: str = "") -> None:
        """Forget one region (by name) or all (""); views in use keep their mapping alive.
        A name not registered is not an error, as in Triton: clients unregister to be sure."""
        if not name:
            self._regions.clear()
        else:
            self._regions.pop(name, None)

    def status(self, name: str = "") -> list[Region]:
        if not name:
            return sorted(self._regions.values(), key=lambda r: r.name)
        return [self.get(name)]

    def get(self, name: str) -> Region:
        region = self._regions.get(name)
        if region is None:
            raise InvalidInput(f"Unable to find shared memory region: '{shown(name)}'")
        return region

    # ---- what requests ask of regions -----------------------------------------------------------

    def inputs(
        self, request: pb.ModelInferRequest, raw: Sequence[Buffer | None] | None
    ) -> list[Buffer] | None:
        """Every input's data when some come from regions (None when none does): region views
        for those, and for the others the request's own data in order (`raw` from an HTTP body,
        else raw_input_contents, which then holds entries for the other inputs only)."""
        if not any(REGION in tensor.parameters for tensor in request.inputs):
            return None
        own = iter([b for b in raw if b is not None] if raw is not None
                   else request.raw_input_contents)  # fmt: skip
        out: list[Buffer] = []
        for tensor in request.inputs:
            parameters = tensor.parameters
            if REGION in parameters:
                region = self.get(parameters[REGION].string_param)
                out.append(
                    region.slice(
                        _integer(parameters, OFFSET, tensor.name, required=False),
                        _integer(parameters, BYTE_SIZE, tensor.name, required=True),
                        f"input '{shown(tensor.name)}'",
                    )
                )
            else:
                data = next(own, None)
                if data is None:
                    raise InvalidInput(f"input '{shown(tensor.name)}' has no data")
                out.append(data)
        return out

    def outputs(self, request: pb.ModelInferRequest) -> dict[str, memoryview]:
        """The outputs to write into regions, each to its slice."""
        targets: dict[str, memoryview] = {}
        for tensor in request.outputs:
            parameters = tensor.parameters
            if REGION in parameters:
                region = self.get(parameters[REGION].string_param)
                targets[tensor.name] = region.slice(
                    _integer(parameters, OFFSET, tensor.name, required=False),
                    _integer(parameters, BYTE_SIZE, tensor.name, required=True),
                    f"output '{shown(tensor.name)}'",
                )
        return targets


def _integer(
    parameters: Mapping[str, pb.InferParameter], key: str, tensor: str, *, required: bool
) -> int:
    if key not in parameters:
        if required:
            raise InvalidInput(f"'{shown(tensor)}' names a shared memory region but no {key}")
        return 0
    parameter = parameters[key]
    kind = parameter.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise InvalidInput(f"'{shown(tensor)}': {key} must be an integer")
    return int(getattr(parameter, kind))
