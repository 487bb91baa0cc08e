"""System shared memory through tritonclient's own helpers, over gRPC and HTTP: inputs read from
and outputs written into regions the client registered, mixed with inline data; every bad
registration and every bad use refused with a precise status; a region unregistered under a
queued request stays valid for it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from tests.conftest import LateAnswer, RunningServer, history_inputs

PROTOCOLS = ["grpc", "http"]


class Regions:
    """Regions this test made, destroyed (and unregistered) at the end."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.handles: list[Any] = []

    def make(self, size: int, register: bool = True, offset: int = 0) -> tuple[str, Any]:
        name = f"r{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(name, f"/ferry_test_{name}", size)
        self.handles.append(handle)
        if register:
            self.client.register_system_shared_memory(
                name, f"/ferry_test_{name}", size - offset, offset=offset
            )
        return name, handle

    def close(self) -> None:
        for handle in self.handles:
            try:
                self.client.unregister_system_shared_memory(handle._triton_shm_name)
            finally:
                shm.destroy_shared_memory_region(handle)


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest, server: RunningServer) -> Iterator[tuple[Any, Any]]:
    module = tc if request.param == "grpc" else th
    address = server.address if request.param == "grpc" else server.http_url[len("http://") :]
    client = module.InferenceServerClient(address)
    regions = Regions(client)
    yield module, regions
    regions.close()


def status_of(exc: InferenceServerException) -> str:
    return str(exc.status())


def test_inputs_and_outputs_travel_through_regions(protocol: tuple[Any, Any]) -> None:
    module, regions = protocol
    x = np.arange(64, dtype=np.float32).reshape(4, 16)
    name_in, handle_in = regions.make(x.nbytes)
    name_out, handle_out = regions.make(x.nbytes)
    shm.set_shared_memory_region(handle_in, [x])
    tensor = module.InferInput("x", [4, 16], "FP32")
    tensor.set_shared_memory(name_in, x.nbytes)
    wanted = module.InferRequestedOutput("y")
    wanted.set_shared_memory(name_out, x.nbytes)
    result = regions.client.infer("echo", [tensor], outputs=[wanted])
    described = result.get_output("y")  # the answer describes the output, the region holds it
    shape = described["shape"] if module is th else list(described.shape)
    assert shape == [4, 16]
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle_out, np.float32, [4, 16]), x)


def test_one_input_from_a_region_one_inline_at_an_offset(protocol: tuple[Any, Any]) -> None:
    """The dlrm model: `dense` inline, `sparse` from a region at an offset; the answer equals
    the all-inline one."""
    module, regions = protocol
    rng = np.random.default_rng(5)
    dense = rng.standard_normal((3, 13)).astype(np.float32)
    sparse = rng.integers(0, 1000, (3, 26)).astype(np.int64)
    name, handle = regions.make(64 + sparse.nbytes)
    shm.set_shared_memory_region(handle, [sparse], offset=64)
    def inputs() -> list[Any]:
        return [module.InferInput("dense", [3, 13], "FP32"),
                module.InferInput("sparse", [3, 26], "INT64")]  # fmt: skip

    inline = inputs()
    inline[0].set_data_from_numpy(dense)
    inline[1].set_data_from_numpy(sparse)
    expected = regions.client.infer("dlrm", inline).as_numpy("ctr")
    mixed = inputs()
    mixed[0].set_data_from_numpy(dense)
    mixed[1].set_shared_memory(name, sparse.nbytes, offset=64)
    np.testing.assert_array_equal(regions.client.infer("dlrm", mixed).as_numpy("ctr"), expected)


def test_status_lists_what_was_registered(protocol: tuple[Any, Any]) -> None:
    _, regions = protocol
    name, _ = regions.make(4096, offset=1024)
    status = regions.client.get_system_shared_memory_status(name)
    found = status if isinstance(status, list) else [
        {"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
        for r in status.regions.values()
    ]  # fmt: skip
    assert found == [{"name": name, "key": f"/ferry_test_{name}", "offset": 1024,
                      "byte_size": 3072}]  # fmt: skip
    # Unregistering a name that is not registered succeeds, as Triton's does.
    regions.client.unregister_system_shared_memory("never_registered")


@pytest.mark.parametrize(
    ("case", "grpc_status", "http_status", "message"),
    [
        ("twice", "StatusCode.ALREADY_EXISTS", "400", "is already registered"),
        ("path", "StatusCode.INVALID_ARGUMENT", "400", "not a POSIX shared memory name"),
        ("dotdot", "StatusCode.INVALID_ARGUMENT", "400", "not a POSIX shared memory name"),
        ("missing", "StatusCode.INVALID_ARGUMENT", "400", "unable to open shared memory key"),
        ("too_big", "StatusCode.INVALID_ARGUMENT", "400", "passes the end of shared memory key"),
        ("empty", "StatusCode.INVALID_ARGUMENT", "400", "byte_size > 0"),
    ],
)
def test_bad_registrations_are_refused(
    protocol: tuple[Any, Any], case: str, grpc_status: str, http_status: str, message: str
) -> None:
    module, regions = protocol
    name, _ = regions.make(256)
    key = f"/ferry_test_{name}"
    attempt = {
        "twice": (name, key, 256, 0),
        "path": ("p", "/tmp/../etc/passwd", 8, 0),
        "dotdot": ("d", "..", 8, 0),
        "missing": ("m", f"/ferry_test_missing_{uuid.uuid4().hex}", 8, 0),
        "too_big": ("b", key, 200, 100),
        "empty": ("e", key, 0, 0),
    }[case]
    with pytest.raises(InferenceServerException) as info:
        regions.client.register_system_shared_memory(attempt[0], attempt[1], attempt[2],
                                                     offset=attempt[3])  # fmt: skip
    expected = grpc_status if module is tc else http_status
    assert status_of(info.value) == expected and message in str(info.value.message())


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown", "Unable to find shared memory region"),
        ("outside", "lies outside shared memory region"),
        ("short", "raw contents hold 32 bytes, but shape [4, 16] of FP32 needs 256"),
        ("output_small", "its shared memory slice holds 16"),
        ("no_size", "names a shared memory region but no shared_memory_byte_size"),
    ],
)
def test_bad_uses_of_regions_are_refused(
    protocol: tuple[Any, Any], case: str, message: str
) -> None:
    module, regions = protocol
    x = np.ones((4, 16), np.float32)
    name, handle = regions.make(x.nbytes)
    shm.set_shared_memory_region(handle, [x])
    tensor = module.InferInput("x", [4, 16], "FP32")
    outputs = None
    if case == "unknown":
        tensor.set_shared_memory("no_such_region", x.nbytes)
    elif case == "outside":
        tensor.set_shared_memory(name, x.nbytes, offset=8)
    elif case == "short":
        tensor.set_shared_memory(name, 32)
    elif case == "no_size":
        tensor.set_shared_memory(name, x.nbytes)
        if module is tc:
            del tensor._input.parameters["shared_memory_byte_size"]
        else:
            del tensor._parameters["shared_memory_byte_size"]
    else:
        tensor.set_data_from_numpy(x)
        small, _ = regions.make(16)
        wanted = module.InferRequestedOutput("y")
        wanted.set_shared_memory(small, 16)
        outputs = [wanted]
    with pytest.raises(InferenceServerException) as info:
        regions.client.infer("echo", [tensor], outputs=outputs)
    assert status_of(info.value) in ("StatusCode.INVALID_ARGUMENT", "400")
    assert message in str(info.value.message())


def test_a_region_unregistered_under_a_queued_request_stays_valid_for_it(
    server: RunningServer,
) -> None:
    """`history_padded` holds its batch 300 ms: the region is unregistered (and the client's own
    handle closed) while the request waits; it is answered from the data it named."""
    client = tc.InferenceServerClient(server.address)
    regions = Regions(client)
    try:
        history = np.arange(1, 6, dtype=np.int64)[None]
        name, handle = regions.make(history.nbytes)
        shm.set_shared_memory_region(handle, [history])
        expected = client.infer("history_padded", history_inputs()).as_numpy("score")
        inputs = history_inputs()
        inputs[0].set_shared_memory(name, history.nbytes)
        late = LateAnswer()
        client.async_infer("history_padded", inputs, late)
        time.sleep(0.1)
        client.unregister_system_shared_memory(name)
        result, error = late.wait(10)
        assert error is None
        np.testing.assert_array_equal(result.as_numpy("score"), expected)
    finally:
        regions.close()
