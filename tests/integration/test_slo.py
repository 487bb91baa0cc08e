"""A latency budget on the real server: once the controller has learned what `dlrm`'s batches
cost, a request that cannot make the budget is refused at arrival with UNAVAILABLE saying why,
small requests go on being answered, and /metrics shows the controller's settings and refusals."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from tests.conftest import start_server, stop_server


def inputs(rows: int) -> list[tc.InferInput]:
    rng = np.random.default_rng(rows)
    dense = tc.InferInput("dense", [rows, 13], "FP32")
    dense.set_data_from_numpy(rng.standard_normal((rows, 13)).astype(np.float32))
    sparse = tc.InferInput("sparse", [rows, 26], "INT64")
    sparse.set_data_from_numpy(rng.integers(0, 1000, (rows, 26)).astype(np.int64))
    return [dense, sparse]


def test_a_request_that_cannot_make_the_budget_is_refused_at_arrival(
    model_repo: Path, tmp_path: Path
) -> None:
    server = start_server(model_repo, tmp_path, "--slo-p99-ms", "10")
    try:
        client = tc.InferenceServerClient(server.address)
        for rows in (1, 2, 4, 8) * 3:  # batches to learn from
            client.infer("dlrm", inputs(rows))
        with pytest.raises(InferenceServerException) as refused:
            client.infer("dlrm", inputs(1024))
        assert refused.value.status() == "StatusCode.UNAVAILABLE"
        assert "over the model's p99 budget of 10 ms" in refused.value.message()
        assert client.infer("dlrm", inputs(1)).as_numpy("ctr").shape == (1, 1)
        text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
        assert 'ferry_slo_refused_total{model="dlrm",reason="budget",version="1"} 1.0' in text
        cap = next(
            line for line in text.splitlines() if line.startswith("ferry_slo_batch_rows_cap{")
        )
        assert 'model="dlrm"' in cap and 1 <= float(cap.rsplit(" ", 1)[1]) < 1024
        rejected = 'nv_inference_request_failure{model="dlrm",reason="REJECTED",version="1"}'
        assert f"{rejected} 1.0" in text
    finally:
        stop_server(server)
