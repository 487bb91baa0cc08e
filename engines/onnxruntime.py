"""ONNX Runtime backend: serves `model.onnx` on the CPU (the default where no GPU exists).

Each instance owns its own `InferenceSession` and one worker thread. ONNX Runtime releases the
GIL while it computes, so the event loop stays free, and N instances run N batches at once.

Handing a batch to the worker thread and back costs a request far more than a tiny model takes
to run (the `echo` model), even with the cold caches a busy server leaves. So an instance
measures its batches and runs one on the event loop itself (`run_now`) when batches of that many
rows have finished within `INLINE_BUDGET_NS`; one that overruns sends the row count back to the
thread. The loop is then held no longer than
a thread hand-off would have cost the request.

What a batch costs is judged by CPU time, on the loop as on the thread: the clock also counts
the moments the OS gave the core to someone else. Even the thread's CPU time is inflated
when the loop is busy (the thread takes the GIL back from it after every ONNX Runtime call, so
an `echo` batch costs the thread many times what it costs alone). So a
batch that came close (`PROBE_NS`) is, every `PROBE_EVERY` such batches, tried once on the loop
itself, where its cost is measured as it would be paid.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ferry.common.cpus import widen_to_compute
from ferry.common.datatypes import DATATYPES, ONNX_TYPES, DataType
from ferry.common.errors import EngineError, ModelLoadError
from ferry.common.flags import parse_flag
from ferry.engines.base import Device, ExecutionResult, Feed, Profile, TensorSpec, Timings
from ferry.engines.loading import in_background
from ferry.engines.staging import gather

_ONNX_BF16 = 16  # TensorProto.BFLOAT16: fed as uint16 bit patterns through OrtValue


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    """Session settings, read from the model config's `parameters` by the repository.

    intra_op_threads: threads one instance uses inside an operator; 0 lets ONNX Runtime pick
    (all cores). With several instances on few cores, 1 per instance avoids oversubscription.
    inter_op_threads: threads for running independent operators in parallel; 0 = default.
    compute_nice: how much lower than the event loop's the CPU priority of the instance's
    threads is (Linux nice steps, 0..19). Default 10: under full load the gRPC front end keeps
    answering promptly and compute takes the CPU left over; 0 runs compute at equal priority.
    in_flight: batches one GPU instance holds at once (config `ferry.in_flight`); the CPU
    backend runs one at a time.
    cuda_graphs: GPU instances capture the model once per batch size as a CUDA graph and replay
    it (config `optimization { cuda { graphs: true } }`): one launch instead of one per kernel,
    which is most of a small model's time. Batches are padded up to the next captured size.
    spinning: whether ONNX Runtime's intra-op threads spin a while for more work after each
    parallel section before they sleep (ONNX Runtime's own default; config
    `allow_spinning: "true"`). Off by default: between many small batches the spinning costs a
    core's worth of CPU that the front end on the same cores needs, for no more throughput
    (bench/front_end_cost.py measures both).
    """

    intra_op_threads: int = 0
    inter_op_threads: int = 0
    compute_nice: int = 10
    in_flight: int = 2
    cuda_graphs: bool = False
    spinning: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.compute_nice <= 19:
            raise ValueError(f"compute_nice must be in 0..19, got {self.compute_nice}")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError(
                f"thread counts must be >= 0, got intra_op_threads={self.intra_op_threads}, "
                f"inter_op_threads={self.inter_op_threads}"
            )


def _spec(arg: Any) -> TensorSpec:
    name = ONNX_TYPES.get(arg.type)
    if name is None:
        raise ModelLoadError(f"tensor '{arg.name}' has type {arg.type}, which Ferry cannot serve")
    dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, DATATYPES[name], dims)


class OnnxSignature:
    """The tensors of an ONNX file, read once at load: what both ONNX Runtime engines expose."""

    _inputs: tuple[TensorSpec, ...]
    _outputs: tuple[TensorSpec, ...]

    @property
    def inputs(self) -> Sequence[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> Sequence[TensorSpec]:
        return self._outputs

    @property
    def profiles(self) -> Sequence[Profile]:
        return ()  # an ONNX file carries none; the model config may declare them


class OnnxRuntimeEngine(OnnxSignature):
    """A loaded ONNX model; every instance opens its own session on the same file."""

    def __init__(self, path: Path, options: OnnxRuntimeOptions = OnnxRuntimeOptions()) -> None:
        self._path = path
        self._options = options
        # The session that reads the tensors is kept for the first instance that would open
        # one just like it: opening a session costs CPU, and dropping one holds the GIL (so the
        # event loop) while ONNX Runtime frees it; a reload under load pays neither twice.
        described = self._open()
        self._inputs = tuple(_spec(a) for a in described.get_inputs())
        self._outputs = tuple(_spec(a) for a in described.get_outputs())
        self._spare: ort.InferenceSession | None = described
        kinds = {s.datatype.name for s in (*self._inputs, *self._outputs)}
        if {"BF16", "BYTES"} <= kinds:
            # BF16 needs OrtValues, which ONNX Runtime's Python API cannot make from strings.
            raise ModelLoadError(
                f"{path}: ONNX Runtime cannot serve a model that mixes BF16 and string tensors"
            )

    def _open(self, threads: int | None = None) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self._options.intra_op_threads if threads is None else threads
        opts.inter_op_num_threads = self._options.inter_op_threads
        opts.log_severity_level = 3
        if not self._options.spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(
                str(self._path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ONNX Runtime raises its own exception types for bad files
            raise ModelLoadError(f"{self._path}: onnxruntime cannot load it: {exc}") from exc

    def create_instance(
        self,
        name: str,
        device: Device,
        profile: Profile,
        threads: int | None = None,
        nice: int | None = None,
        idle_class: bool = False,
        inline_budget_ns: int | None = None,
    ) -> OnnxRuntimeInstance:
        """threads, nice: this instance's intra-op threads and compute priority, when not the
        engine's options (an instance reserved for high priority runs at the loop's, nice 0).
        idle_class: its threads run in Linux's idle scheduling class instead (the unreserved
        instances of a model that reserves some). inline_budget_ns: the loop CPU a batch may
        cost and still run on the event loop, when not INLINE_BUDGET_NS."""
        if device.kind != "cpu":
            raise ModelLoadError(
                f"instance {name}: the ONNX Runtime CPU backend cannot use {device}"
            )
        open_session: Callable[[], ort.InferenceSession] = functools.partial(self._open, threads)
        if self._spare is not None and threads is None and not idle_class:
            # Opened with the engine's settings on the loading thread, as this one would be (an
            # idle-class instance opens its own on its own thread, for its pool's priority).
            open_session, self._spare = functools.partial(_given, self._spare), None
        return OnnxRuntimeInstance(
            name,
            open_session,
            self._inputs,
            self._outputs,
            profile,
            self._options.compute_nice if nice is None else nice,
            idle_class,
            inline_budget_ns,
        )

    def close(self) -> None:
        self._spare = None


def _given(session: ort.InferenceSession) -> ort.InferenceSession:
    return session


INLINE_BUDGET_NS = 100_000
"""A batch that costs the loop this much CPU or less runs on the event loop: below what a
thread hand-off costs a request. Half of it was too close to what a tiny ONNX Runtime call costs
with cold caches on a loop that also serves gRPC: many tiny batches bounced to the thread
(bench/echo_ab.py compares such settings)."""

PROBE_NS = 2 * INLINE_BUDGET_NS
"""A batch whose thread CPU time was under this may be cheap enough for the loop: try it there."""

PROBE_EVERY = 32
"""How many such near misses on the thread come before one trial on the loop."""

RESERVED_INLINE_BUDGET_NS = 1_500_000
"""The inline budget of an instance reserved for the highest priority. Its batches are few and
small, and their latency is the point: on the loop they skip two thread hand-offs, each of which
can wait for a CPU while the unreserved instances compute (bench/scheduling.py's priority part
measures the high-priority p99 under a saturating low-priority load). Everything else on the
loop waits for at most one such batch."""


class OnnxRuntimeInstance:
    """One session and the one thread that runs it (tiny batches run inline; see the module)."""

    def __init__(
        self,
        name: str,
        open_session: Callable[[], ort.InferenceSession],
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        profile: Profile,
        nice: int = 0,
        idle_class: bool = False,
        inline_budget_ns: int | None = None,
    ) -> None:
        self._name = name
        self._budget_ns = inline_budget_ns  # None: the module's INLINE_BUDGET_NS
        self._profile = profile
        self._inline_rows = 0  # batches of at most this many rows run on the event loop
        self._thread_cpu_ns = 0  # CPU time of the calling thread in the last batch
        self._near_misses = 0  # batches under PROBE_NS on the thread since the last trial
        self._trial_rows = 0  # the next batch of at most this many rows is tried on the loop
        self._inline_cost_ns = 0  # running average of what a batch run on the loop takes
        self._inputs = inputs
        self._outputs = outputs
        self._output_names = [o.name for o in outputs]
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"ferry-{name}",
            initializer=_lower_priority,
            initargs=(nice, idle_class),
        )
        try:
            # ONNX Runtime's intra-op pool threads take the priority of the thread that opens
            # the session. An instance in the idle class opens it on its own thread, so the pool
            # joins the class; any other opens it on the calling thread (the loader's loading
            # thread), so that the pool works at the loading priority while the instance warms
            # up beside serving models (bench/model_reload.py). Once it serves, the instance's
            # thread, which calls the session and takes its share of every batch, runs at `nice`.
            if idle_class:
                self._session = self._executor.submit(open_session).result()
            else:
                self._session = open_session()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise
        self._needs_ort_values = any(s.datatype.name == "BF16" for s in (*inputs, *outputs))

    @property
    def name(self) -> str:
        return self._name

    @property
    def profile(self) -> Profile:
        return self._profile

    device = Device()
    in_flight = 1  # one session, one thread: one batch at a time
    inline = True

    def run_now(self, feed: Feed) -> ExecutionResult | None:
        """Run the batch on the calling thread (the event loop) if batches of its size are known
        to cost less there than a thread hand-off; None: it must go through `run`."""
        if feed.rows > max(self._inline_rows, self._trial_rows):
            return None
        self._trial_rows = 0
        result = self._run_blocking(feed)
        # The loop's CPU time, not the wall time: a run during which the OS preempted the
        # loop (a client on the same cores) cost the loop nothing extra. A running average
        # besides, so that one slow batch does not send every batch back to the thread.
        spent = self._thread_cpu_ns
        cost = self._inline_cost_ns
        cost = spent if cost == 0 else (cost * 7 + spent) // 8
        if cost > self._budget():
            self._inline_rows = min(self._inline_rows, feed.rows - 1)  # back to the thread
            cost = 0
        else:
            self._inline_rows = max(self._inline_rows, feed.rows)
        self._inline_cost_ns = cost
        return result

    async def run(self, feed: Feed) -> ExecutionResult:
        result = self.run_now(feed)
        if result is not None:
            return result
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._executor, self._run_blocking, feed)
        # Judged by the thread's CPU time: its wall time counts every moment the busy event
        # loop (or a client on the same cores) kept the lower-priority thread waiting, and
        # would keep a tiny batch off the loop for good exactly when the loop is busiest.
        if self._thread_cpu_ns <= self._budget() // 2:  # clearly fast: worth running inline
            self._inline_rows = max(self._inline_rows, feed.rows)
        elif self._thread_cpu_ns <= self._probe():
            self._near_misses += 1
            if self._near_misses >= PROBE_EVERY:  # maybe only the busy loop made it look slow
                self._near_misses = 0
                self._trial_rows = feed.rows
        return result

    async def warm(self, feed: Feed) -> None:
        """On the loading thread (engines/loading.py), not the instance's: the warm-up's share
        of the CPU stays at the loading priority, under the serving versions' compute."""
        await in_background(self._run_blocking, feed)

    def _budget(self) -> int:
        return INLINE_BUDGET_NS if self._budget_ns is None else self._budget_ns

    def _probe(self) -> int:
        return PROBE_NS if self._budget_ns is None else 2 * self._budget_ns

    def _run_blocking(self, feed: Feed) -> ExecutionResult:
        cpu0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        feeds = {s.name: _to_ort(gather(feed, s.name), s.datatype) for s in self._inputs}
        t1 = time.perf_counter_ns()
        try:
            if self._needs_ort_values:
                values = self._session.run_with_ort_values(
                    self._output_names,
                    {
                        k: v if isinstance(v, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(v)
                        for k, v in feeds.items()
                    },
                )
                raw = [_from_ort_value(v) for v in values]
            else:
                raw = self._session.run(self._output_names, feeds)
        except Exception as exc:  # ONNX Runtime's own exception types; translated here
            raise EngineError(f"onnxruntime failed to run the batch: {exc}") from exc
        t2 = time.perf_counter_ns()
        outputs = {
            s.name: _from_ort(a, s.datatype) for s, a in zip(self._outputs, raw, strict=True)
        }
        t3 = time.perf_counter_ns()
        self._thread_cpu_ns = time.thread_time_ns() - cpu0
        return ExecutionResult(outputs, Timings(t1 - t0, t2 - t1, t3 - t2))

    async def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _lower_priority(nice: int, idle_class: bool = False) -> None:
    """Lower the calling thread's CPU priority by `nice` (Linux: per thread; inherited by the
    threads it starts, such as the ONNX Runtime pool of a session it opens). The event loop
    keeps its priority, so under full load it still answers promptly while compute takes
    whatever CPU is left.

    `idle_class` goes further: Linux's SCHED_IDLE, whose threads run only on CPU time no other
    thread wants, and give way the moment one wakes. Nice 10 is not enough for that: a waking
    event loop still waited behind busy nice-10 compute threads often enough to set the p99."""
    widen_to_compute()  # off the front end's CPU (common/cpus.py)
    tid = threading.get_native_id()
    if idle_class and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            return
        except OSError:
            pass  # not permitted here: fall back to nice
    if nice > 0 and hasattr(os, "setpriority"):
        try:
            os.setpriority(
                os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + nice, 19)
            )
        except OSError:
            pass  # not permitted here: run at normal priority


def _to_ort(array: np.ndarray, datatype: DataType) -> Any:
    if datatype.name == "BYTES":
        # ONNX Runtime string tensors hold UTF-8 text; the codec has checked every element.
        return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(array)
    if datatype.name == "BF16":
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
            np.ascontiguousarray(array), _ONNX_BF16
        )
    return array


def _from_ort(value: Any, datatype: DataType) -> np.ndarray:
    array = np.asarray(value)
    if datatype.name == "BYTES":
        return np.vectorize(_encode_str, otypes=[object])(array) if array.size else array
    return array


def _from_ort_value(value: Any) -> Any:
    if value.data_type() == "tensor(bfloat16)":
        # numpy has no bfloat16 and OrtValue.numpy() refuses it: copy the 2-byte patterns out.
        shape = tuple(value.shape())
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0:
            return np.empty(shape, dtype=np.uint16)
        buffer = (ctypes.c_uint16 * count).from_address(value.data_ptr())
        return np.ctypeslib.as_array(buffer).reshape(shape).copy()
    return value.numpy()


def _encode_str(s: str | bytes) -> bytes:
    return s if isinstance(s, bytes) else s.encode("utf-8")


def options_from_parameters(parameters: Mapping[str, str]) -> OnnxRuntimeOptions:
    """Session options from model config `parameters` (Triton's ONNX Runtime backend keys)."""

    def number(key: str, default: int = 0) -> int:
        text = parameters.get(key, str(default))
        try:
            return int(text)
        except ValueError:
            raise ModelLoadError(f"parameter '{key}' must be an integer, got '{text}'") from None

    def flag(key: str, default: bool) -> bool:
        text = parameters.get(key, str(default))
        value = parse_flag(text)
        if value is None:
            raise ModelLoadError(f"parameter '{key}' must be \"true\" or \"false\", got '{text}'")
        return value

    try:
        return OnnxRuntimeOptions(
            number("intra_op_thread_count"),
            number("inter_op_thread_count"),
            number("compute_thread_nice", OnnxRuntimeOptions.compute_nice),
            spinning=flag("allow_spinning", OnnxRuntimeOptions.spinning),
        )
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc
