"""Triton's classification extension and config `reshape`, on the example image classifier:
its network ends in a [10, 1, 1] map that clients see as 10 scores, and `classification: k`
turns them into the top k "value:index:label" strings per image, over gRPC and HTTP."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from ferry.server.example_repo import LABELS
from tests.conftest import RunningServer


def client_for(server: RunningServer, protocol: str) -> tuple[Any, Any]:
    if protocol == "grpc":
        return tc, tc.InferenceServerClient(server.address)
    return th, th.InferenceServerClient(server.http_url[len("http://") :])


def images(n: int) -> np.ndarray:
    return np.random.default_rng(n).random((n, 3, 32, 32), dtype=np.float32)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_scores_come_back_in_the_configured_shape(server: RunningServer, protocol: str) -> None:
    module, client = client_for(server, protocol)
    tensor = module.InferInput("image", [4, 3, 32, 32], "FP32")
    tensor.set_data_from_numpy(images(4))
    scores = client.infer("classifier", [tensor]).as_numpy("scores")
    assert scores.shape == (4, 10)  # the model's [4, 10, 1, 1], reshaped to the config's dims
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)  # softmax rows
    metadata = client.get_model_metadata("classifier")
    outputs = metadata["outputs"] if protocol == "http" else [
        {"shape": list(o.shape)} for o in metadata.outputs
    ]  # fmt: skip
    assert outputs[0]["shape"] == [-1, 10]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("k", [1, 3, 10, 25])
def test_top_k_classes_with_their_labels(server: RunningServer, protocol: str, k: int) -> None:
    module, client = client_for(server, protocol)
    tensor = module.InferInput("image", [3, 3, 32, 32], "FP32")
    tensor.set_data_from_numpy(images(3))
    scores = client.infer("classifier", [tensor]).as_numpy("scores")
    wanted = module.InferRequestedOutput("scores", class_count=k)
    top = client.infer("classifier", [tensor], outputs=[wanted]).as_numpy("scores")
    shown = min(k, 10)  # capped at the classes there are
    assert top.shape == (3, shown)
    for row, entries in zip(scores, top, strict=True):
        parsed = [e.decode().split(":") if isinstance(e, bytes) else e.split(":") for e in entries]
        indices = [int(p[1]) for p in parsed]
        assert indices == list(np.argsort(-row, kind="stable")[:shown])
        for value, index, label in parsed:
            assert abs(float(value) - row[int(index)]) < 1e-6
            assert label == LABELS[int(index)]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_classification_needs_a_positive_count_and_a_numeric_output(
    server: RunningServer, protocol: str
) -> None:
    module, client = client_for(server, protocol)
    tensor = module.InferInput("INPUT0", [1, 2], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"a", b"b"]], dtype=object))
    wanted = module.InferRequestedOutput("OUTPUT0", class_count=2)
    with pytest.raises(InferenceServerException) as info:
        client.infer("simple_identity", [tensor], outputs=[wanted])
    assert "classification needs a numeric output" in str(info.value.message())
