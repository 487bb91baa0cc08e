"""Which batch sizes the ONNX Runtime CUDA backend captures as graphs, and which models it
refuses to graph. (Capture and replay themselves need a GPU: tests/gpu.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ferry.common.datatypes import DATATYPES
from ferry.common.errors import ModelLoadError
from ferry.engines.base import TensorSpec
from ferry.engines.onnxruntime_cuda import check_graphable, graph_size, graph_sizes


def test_sizes_are_the_powers_of_two_below_the_max_and_the_max() -> None:
    assert graph_sizes(1) == (1,)
    assert graph_sizes(1024) == (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
    assert graph_sizes(1000) == (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)
    with pytest.raises(ValueError, match="max rows >= 1, got 0"):
        graph_sizes(0)


@given(st.integers(1, 1 << 16), st.data())
def test_a_batch_runs_as_the_smallest_size_that_holds_it(
    max_rows: int, data: st.DataObject
) -> None:
    sizes = graph_sizes(max_rows)
    rows = data.draw(st.integers(1, max_rows))
    size = graph_size(sizes, rows)
    assert size in sizes and size >= rows
    assert all(s < rows for s in sizes if s < size)  # none smaller holds it
    assert size == rows or size < 2 * rows  # less than half of it is padding


def test_a_batch_larger_than_every_graph_is_an_error() -> None:
    with pytest.raises(ValueError, match="1025 rows is larger than every graph"):
        graph_size(graph_sizes(1024), 1025)


def spec(name: str, dims: tuple[int, ...]) -> TensorSpec:
    return TensorSpec(name, DATATYPES["FP32"], dims)


def test_graphs_need_a_batched_model_with_fixed_dims() -> None:
    path = Path("m/1/model.onnx")
    check_graphable(path, 8, [spec("a", (-1, 13)), spec("b", (-1, 1))])
    with pytest.raises(ModelLoadError, match=r"needs a batched model \(max_batch_size > 0\)"):
        check_graphable(path, 0, [spec("a", (4, 13))])
    with pytest.raises(ModelLoadError, match=r"tensor 'x' has dims \[-1\]"):
        check_graphable(path, 8, [spec("a", (-1, 13)), spec("x", (-1, -1))])
