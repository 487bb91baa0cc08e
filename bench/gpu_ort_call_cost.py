"""What one ONNX Runtime CUDA call costs, by the way it is called (GPU machine, one process):
where does the per-batch time of Ferry's ONNX Runtime CUDA instance go?

    PYTHONPATH=/tmp/site:$PWD python3 -m bench.gpu_ort_call_cost [--model dlrm] [--rows 1024]

run(numpy)            session.run with host arrays: ONNX Runtime copies in and out itself
iobinding, own stream  run_with_iobinding on device buffers, session on ORT's own stream;
                      our copies are synchronized before the run, ORT synchronizes after it
iobinding, user stream run_with_iobinding on device buffers, session bound to our stream
                      (`user_compute_stream`, run option disable_synchronize_execution_providers),
                      then our stream synchronized: what Ferry's instance does
µs per call (mean of --calls calls after a warm-up), printed as one table; --out writes JSON.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import record
from ferry.server.example_repo import write_example_repo

CUDA = "CUDAExecutionProvider"


def per_call_us(call: Any, calls: int) -> float:
    for _ in range(20):
        call()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="dlrm", choices=["dlrm", "dlrm_large"])
    parser.add_argument("--repo", type=Path)
    parser.add_argument("--rows", default="1024,4096")
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--out", type=Path, help="folder for the JSON record (bench/results)")
    args = parser.parse_args()
    import onnxruntime as ort

    from ferry.engines.cuda.stream import DeviceBuffer, PinnedBuffer, Stream

    root = args.repo
    if root is None:
        root = Path(tempfile.mkdtemp())
        write_example_repo(root, large=args.model == "dlrm_large")
    path = str(root / args.model / "1" / "model.onnx")
    quiet = ort.SessionOptions()
    quiet.log_severity_level = 3
    plain = ort.InferenceSession(path, quiet, providers=[CUDA])
    stream = Stream(0)
    bound = ort.InferenceSession(
        path,
        quiet,
        providers=[
            (CUDA, {"has_user_compute_stream": "1", "user_compute_stream": str(int(stream.handle))})
        ],
    )
    no_sync = ort.RunOptions()
    no_sync.add_run_config_entry("disable_synchronize_execution_providers", "1")
    results: dict[str, dict[str, float]] = {}

    def measure(rows: int) -> dict[str, float]:
        rng = np.random.default_rng(1)
        feeds = {
            "dense": rng.standard_normal((rows, 13)).astype(np.float32),
            "sparse": rng.integers(0, 10**6, (rows, 26)).astype(np.int64),
        }
        host = {k: PinnedBuffer(v.nbytes) for k, v in feeds.items()}
        gpu = {k: DeviceBuffer(v.nbytes, 0) for k, v in feeds.items()}
        out_host, out_gpu = PinnedBuffer(rows * 4), DeviceBuffer(rows * 4, 0)
        for k, v in feeds.items():
            host[k].view(v.dtype, v.shape)[...] = v

        def binding(session: Any) -> Any:
            made = session.io_binding()
            for k, v in feeds.items():
                made.bind_input(k, "cuda", 0, v.dtype, v.shape, gpu[k].pointer)
            made.bind_output("ctr", "cuda", 0, np.float32, (rows, 1), out_gpu.pointer)
            return made

        own, user = binding(plain), binding(bound)

        def copies_in() -> None:
            for k, v in feeds.items():
                gpu[k].copy_from(host[k], v.nbytes, stream)

        def own_stream() -> None:
            copies_in()
            stream.synchronize()
            plain.run_with_iobinding(own)
            out_host.copy_from(out_gpu, rows * 4, stream)
            stream.synchronize()

        def user_stream() -> None:
            copies_in()
            bound.run_with_iobinding(user, no_sync)
            out_host.copy_from(out_gpu, rows * 4, stream)
            stream.synchronize()

        def user_stream_run_only() -> None:
            bound.run_with_iobinding(user, no_sync)

        found = {
            "run(numpy)": per_call_us(lambda: plain.run(None, feeds), args.calls),
            "iobinding, own stream": per_call_us(own_stream, args.calls),
            "iobinding, user stream": per_call_us(user_stream, args.calls),
            "run_with_iobinding alone (user stream, no sync)": per_call_us(
                user_stream_run_only, args.calls
            ),
        }
        stream.synchronize()
        for buffer in (*host.values(), *gpu.values(), out_host, out_gpu):
            buffer.close()
        return found

    for rows in map(int, args.rows.split(",")):
        results[str(rows)] = measure(rows)

    names = list(next(iter(results.values())))
    print(f"model {args.model}: µs per call")
    print(f"{'variant':<50}" + "".join(f" {r:>10}" for r in results))
    for name in names:
        print(f"{name:<50}" + "".join(f" {results[r][name]:>10.0f}" for r in results))
    print(f"full results: {record('gpu_ort_call_cost', vars(args), {'us': results}, args.out)}")
    stream.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
