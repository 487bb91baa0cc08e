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

    def timed(name: str, fn):  # type: ignore[no-untyped-def]
        start = time.perf_counter_ns()
        out = fn()
        steps[name] = steps.get(name, 0.0) + (time.perf_counter_ns() - start) / 1e3
        return out

    for run in range(args.runs + 20):
        if run == 20:
            steps.clear()
        timed("direct session.run (numpy)", lambda: direct.run(None, feeds))
        binding = timed("io_binding()", lambda: inst._session.io_binding())
        for spec in inst._inputs:
            array = feeds[spec.name]
            staging = inst._staging[spec.name]
            staging.ensure(array.nbytes)
            view = staging.host.view(array.dtype, array.shape)
            timed("gather into pinned", lambda v=view, n=spec.name: gather_into(feed, n, v))
            timed(
                "copy in (cudaMemcpyAsync)",
                lambda s=staging, a=array: s.gpu.copy_from(s.host, a.nbytes, inst._stream),
            )
            timed(
                "bind_input",
                lambda b=binding, s=staging, a=array, n=spec.name: b.bind_input(
                    n, "cuda", 0, a.dtype, a.shape, s.gpu.pointer
                ),
            )
        out = inst._outputs[0]
        staging = inst._staging[out.name]
        staging.ensure(rows * 4)
        timed(
            "bind_output",
            lambda: binding.bind_output(
                out.name, "cuda", 0, np.float32, (rows, 1), staging.gpu.pointer
            ),
        )
        timed(
            "run_with_iobinding",
            lambda: inst._session.run_with_iobinding(binding, inst._run_options),
        )
        timed(
            "copy out (cudaMemcpyAsync)",
            lambda: staging.host.copy_from(staging.gpu, rows * 4, inst._stream),
        )
        timed("stream synchronize", inst._stream.synchronize)
    for name, total in steps.items():
        print(f"{name:32s} {total / args.runs:8.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
