"""Where the ONNX Runtime CUDA instance's per-batch time goes, step by step (diagnostic, GPU).

    PYTHONPATH=/tmp/site:$PWD python3 bench/gpu_enqueue_profile.py [--rows 1024]

Times each step of OnnxRuntimeCudaInstance._enqueue separately (means over many batches, µs)
next to a plain `session.run` with numpy feeds on the CUDA provider.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines.base import UNBOUNDED, Device, Feed
from engines.onnxruntime_cuda import OnnxRuntimeCudaEngine
from engines.staging import gather_into
from server.example_repo import write_example_repo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    import onnxruntime as ort

    root = Path(tempfile.mkdtemp())
    write_example_repo(root)
    path = root / "dlrm" / "1" / "model.onnx"
    rng = np.random.default_rng(0)
    rows = args.rows
    feeds = {
        "dense": rng.standard_normal((rows, 13)).astype(np.float32),
        "sparse": rng.integers(0, 10**6, (rows, 26)).astype(np.int64),
    }
    direct = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    instance = OnnxRuntimeCudaEngine(path).create_instance("p", Device("gpu", 0), UNBOUNDED)
    feed = Feed([feeds], rows)
    inst = instance
    steps: dict[str, float] = {}

    @contextmanager
    def timed(name: str) -> Iterator[None]:
        start = time.perf_counter_ns()
        yield
        steps[name] = steps.get(name, 0.0) + (time.perf_counter_ns() - start) / 1e3

    for run in range(args.runs + 20):
        if run == 20:
            steps.clear()
        with timed("direct session.run (numpy)"):
            direct.run(None, feeds)
        with timed("io_binding()"):
            binding = inst._session.io_binding()
        for spec in inst._inputs:
            array = feeds[spec.name]
            staging = inst._staging[spec.name]
            staging.ensure(array.nbytes)
            view = staging.host.view(array.dtype, array.shape)
            with timed("gather into pinned"):
                gather_into(feed, spec.name, view)
            with timed("copy in (cudaMemcpyAsync)"):
                staging.gpu.copy_from(staging.host, array.nbytes, inst._stream)
            with timed("bind_input"):
                binding.bind_input(
                    spec.name, "cuda", 0, array.dtype, array.shape, staging.gpu.pointer
                )
        out = inst._outputs[0]
        staging = inst._staging[out.name]
        staging.ensure(rows * 4)
        with timed("bind_output"):
            binding.bind_output(out.name, "cuda", 0, np.float32, (rows, 1), staging.gpu.pointer)
        with timed("run_with_iobinding"):
            inst._session.run_with_iobinding(binding, inst._run_options)
        with timed("copy out (cudaMemcpyAsync)"):
            staging.host.copy_from(staging.gpu, rows * 4, inst._stream)
        with timed("stream synchronize"):
            inst._stream.synchronize()
    for name, total in steps.items():
        print(f"{name:32s} {total / args.runs:8.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
