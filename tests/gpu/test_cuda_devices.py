"""Device discovery and CUDA error checking on a real GPU (marker `gpu`)."""

from __future__ import annotations

import pytest

from ferry.common.errors import CudaError
from ferry.engines.cuda.devices import check, cuda_device_count, discover

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def found():  # type: ignore[no-untyped-def]
    result = discover()
    if not result.devices:
        pytest.skip(f"no GPU: {result.reason}")
    return result


def test_every_device_has_a_uuid_and_memory(found) -> None:  # type: ignore[no-untyped-def]
    assert found.cuda_devices >= 1
    for device in found.devices:
        assert device.uuid.startswith("MIG-" if device.is_mig else "GPU-")
        assert device.memory_bytes > 1 << 30
    count, problem = cuda_device_count()
    assert problem == "" and count == found.cuda_devices


def test_a_failed_cuda_call_names_the_call_and_the_error(found) -> None:  # type: ignore[no-untyped-def]
    from cuda.bindings import runtime

    assert check(runtime.cudaGetDeviceCount(), "cudaGetDeviceCount") >= 1
    with pytest.raises(CudaError) as info:
        check(runtime.cudaSetDevice(10_000), "cudaSetDevice(10000)")
    assert "cudaSetDevice(10000) failed: cudaErrorInvalidDevice" in str(info.value)
