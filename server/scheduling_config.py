"""config.pbtxt to scheduler settings: batching, queue policies, profiles, padding, instances.

Triton's own fields (`dynamic_batching`, its queue policies, `instance_group`) are read as Triton
defines them. What Triton has no field for lives in `parameters` under keys starting with
`ferry.`, which Triton itself ignores, so one config.pbtxt serves both:

    ferry.profile.<N>          optimization profile N of an ONNX model, e.g.
                               "history:1..64" or "history:1..32..64 user:16..16"
                               (per input min..max or min..opt..max; dims joined by "x": 1x1..8x64)
    ferry.pad.<input>          the input may be padded in its variable dims with this value ("0")
    ferry.pad_buckets.<input>  lengths a padded dim is rounded up to ("16,64,256")
    ferry.cut.<output>         the output's variable dims follow this padded input's lengths and
                               are cut back to each request's own
    ferry.split_oversized      "false": refuse requests with more rows than a batch may hold
                               (default "true": split them into chunks)
    ferry.max_queue_bytes      bound on the input bytes queued for the model (default: the
                               server's --max-queue-bytes)
    ferry.in_flight            batches one GPU instance holds at once (default 2): gathering the
                               next batch overlaps computing this one
    ferry.slo.p99_ms           a p99 latency budget in ms (default: the server's --slo-p99-ms):
                               the queue delay and batch cap follow the load to hold it, within
                               max_queue_delay_microseconds when that is set (scheduler/slo.py)
    ferry.slo.refuse           "false": requests predicted to miss the budget still queue
                               (default "true": refused at once, UNAVAILABLE)
    ferry.reserved_instances   instances of each profile that run only batches of priority level
                               1 (default 0), so high-priority requests never wait for a running
                               lower-level batch; needs priority_levels >= 2 and leaves at least
                               one instance per profile for every level
    ferry.build.<field>        shown, not read: the server sets these from a built version's
                               manifest (builder/manifest.py); given in a config (one copied
                               from ModelConfig) they are dropped at load

An unknown `ferry.` key is a load error naming it; any other parameter belongs to the backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ferry.common.errors import ModelLoadError
from ferry.common.flags import parse_flag
from ferry.engines.base import UNBOUNDED, Device, Profile, ShapeRange, TensorSpec
from ferry.engines.cuda.devices import Discovery
from ferry.engines.loading import PlannedInstance
from ferry.proto import model_config_pb2 as mc
from ferry.scheduler.config import BatchingConfig, QueuePolicy, TimeoutAction
from ferry.scheduler.shapes import CutOutput, PaddedInput, Padding
from ferry.scheduler.slo import SloConfig

PREFIX = "ferry."
_KEYS = ("profile.", "pad.", "pad_buckets.", "cut.", "build.")
_FLAGS = (
    "split_oversized",
    "max_queue_bytes",
    "in_flight",
    "reserved_instances",
    "slo.p99_ms",
    "slo.refuse",
)


def check_keys(parameters: Mapping[str, str], where: str) -> None:
    """Refuse a `ferry.` parameter Ferry does not know (a typo must not be silently ignored)."""
    for key in parameters:
        if not key.startswith(PREFIX):
            continue
        rest = key[len(PREFIX) :]
        if rest in _FLAGS or any(rest.startswith(k) and len(rest) > len(k) for k in _KEYS):
            continue
        raise ModelLoadError(f"{where}: parameter '{key}' is unknown to Ferry")


def batching(
    config: mc.ModelConfig,
    parameters: Mapping[str, str],
    default_max_queue_bytes: int,
    where: str,
    default_slo_p99_ms: float | None = None,
) -> BatchingConfig:
    dyn = config.dynamic_batching
    slo = _slo(parameters, default_slo_p99_ms, dyn.max_queue_delay_microseconds, where)
    try:
        return BatchingConfig(
            max_batch_size=config.max_batch_size,
            dynamic=config.HasField("dynamic_batching") and config.max_batch_size > 0,
            preferred_batch_sizes=tuple(sorted(set(dyn.preferred_batch_size))),
            max_queue_delay_s=dyn.max_queue_delay_microseconds / 1e6,
            priority_levels=dyn.priority_levels,
            default_priority=dyn.default_priority_level,
            default_policy=_policy(dyn.default_queue_policy),
            priority_policies={
                int(level): _policy(policy) for level, policy in dyn.priority_queue_policy.items()
            },
            preserve_ordering=dyn.preserve_ordering,
            split_oversized=_flag(parameters, "split_oversized", True, where),
            max_queue_bytes=_count(parameters, "max_queue_bytes", default_max_queue_bytes, where),
            reserved_instances=_count(parameters, "reserved_instances", 0, where),
            slo=slo,
        )
    except ValueError as exc:
        raise ModelLoadError(f"{where}: dynamic_batching: {exc}") from None


def _slo(
    parameters: Mapping[str, str], default_p99_ms: float | None, delay_us: int, where: str
) -> SloConfig | None:
    """`ferry.slo.p99_ms` (else the server's --slo-p99-ms); `ferry.slo.refuse` false keeps
    requests that are predicted to miss it queued. A configured max_queue_delay is a limit."""
    text = parameters.get(PREFIX + "slo.p99_ms")
    p99_ms = default_p99_ms
    if text is not None:
        try:
            p99_ms = float(text)
        except ValueError:
            p99_ms = -1.0
        if not p99_ms > 0:
            raise ModelLoadError(
                f"{where}: parameter '{PREFIX}slo.p99_ms' must be a number of milliseconds > 0"
            )
    refuse = _flag(parameters, "slo.refuse", True, where)
    if p99_ms is None:
        if PREFIX + "slo.refuse" in parameters:
            raise ModelLoadError(
                f"{where}: '{PREFIX}slo.refuse' needs a budget ('{PREFIX}slo.p99_ms')"
            )
        return None
    return SloConfig(p99_ms / 1e3, refuse, delay_us / 1e6 if delay_us > 0 else None)


def _policy(policy: mc.ModelQueuePolicy) -> QueuePolicy:
    return QueuePolicy(
        timeout_action=TimeoutAction[mc.ModelQueuePolicy.TimeoutAction.Name(policy.timeout_action)],
        default_timeout_s=policy.default_timeout_microseconds / 1e6,
        allow_timeout_override=policy.allow_timeout_override,
        max_queue_size=policy.max_queue_size,
    )


def _flag(parameters: Mapping[str, str], name: str, default: bool, where: str) -> bool:
    text = parameters.get(PREFIX + name)
    if text is None:
        return default
    flag = parse_flag(text)
    if flag is None:
        raise ModelLoadError(f"{where}: parameter '{PREFIX}{name}' must be true or false")
    return flag


def count(parameters: Mapping[str, str], name: str, default: int, where: str) -> int:
    """A `ferry.<name>` integer parameter (>= 0), or `default` when absent."""
    return _count(parameters, name, default, where)


def _count(parameters: Mapping[str, str], name: str, default: int, where: str) -> int:
    text = parameters.get(PREFIX + name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ModelLoadError(f"{where}: parameter '{PREFIX}{name}' must be an integer >= 0")
    return value


def profiles(
    parameters: Mapping[str, str], inputs: Mapping[str, TensorSpec], where: str
) -> tuple[Profile, ...]:
    """Profiles declared as `ferry.profile.<N>` (N = 0, 1, ...); () when none is."""
    declared: dict[int, str] = {}
    for key, text in parameters.items():
        if key.startswith(PREFIX + "profile."):
            number = key[len(PREFIX + "profile.") :]
            if not number.isdigit():
                raise ModelLoadError(
                    f"{where}: parameter '{key}': the profile number must be 0, 1, ..."
                )
            declared[int(number)] = text
    if sorted(declared) != list(range(len(declared))):
        raise ModelLoadError(
            f"{where}: profiles must be numbered 0..{len(declared) - 1} without gaps, "
            f"got {sorted(declared)}"
        )
    return tuple(
        _profile(index, declared[index], inputs, f"{where}: parameter '{PREFIX}profile.{index}'")
        for index in range(len(declared))
    )


def _profile(index: int, text: str, inputs: Mapping[str, TensorSpec], where: str) -> Profile:
    ranges: dict[str, ShapeRange] = {}
    for item in text.split():
        name, sep, bounds = item.partition(":")
        spec = inputs.get(name)
        if not sep or spec is None:
            raise ModelLoadError(
                f"{where}: '{item}' must be <input>:<min>..<max> with an input of the model "
                f"({', '.join(inputs)})"
            )
        if name in ranges:
            raise ModelLoadError(f"{where}: input '{name}' appears twice")
        try:
            shapes = [tuple(int(d) for d in part.split("x")) for part in bounds.split("..")]
            if len(shapes) == 2:
                shapes.insert(1, shapes[1])
            if len(shapes) != 3:
                raise ValueError("give min..max or min..opt..max")
            lo, opt, hi = shapes
            bound = ShapeRange(lo, opt, hi)
        except ValueError as exc:
            raise ModelLoadError(
                f"{where}: input '{name}': cannot read '{bounds}': {exc}"
            ) from None
        if len(bound.min) != len(spec.dims):
            raise ModelLoadError(
                f"{where}: input '{name}' has {len(spec.dims)} dims {list(spec.dims)}, the range "
                f"gives {len(bound.min)}"
            )
        for axis, dim in enumerate(spec.dims):
            if dim != -1 and not bound.min[axis] <= dim <= bound.max[axis]:
                raise ModelLoadError(
                    f"{where}: input '{name}' dim {axis} is fixed at {dim}, outside {bound}"
                )
        ranges[name] = bound
    if not ranges:
        raise ModelLoadError(f"{where}: the profile names no input")
    return Profile(index, ranges)


def padding(
    parameters: Mapping[str, str],
    inputs: Mapping[str, TensorSpec],
    outputs: Mapping[str, TensorSpec],
    batched: bool,
    where: str,
) -> Padding:
    padded: dict[str, PaddedInput] = {}
    cuts: dict[str, CutOutput] = {}
    for key, text in parameters.items():
        if key.startswith(PREFIX + "pad."):
            name = key[len(PREFIX + "pad.") :]
            here = f"{where}: parameter '{key}'"
            spec = inputs.get(name)
            if spec is None:
                raise ModelLoadError(f"{here}: the model has no input '{name}'")
            if not batched:
                raise ModelLoadError(f"{here}: padding needs a batched model (max_batch_size > 0)")
            axes = tuple(i for i, d in enumerate(spec.dims) if d == -1)
            if not axes:
                raise ModelLoadError(f"{here}: input '{name}' has no variable (-1) dims to pad")
            padded[name] = PaddedInput(
                _pad_value(text, spec, here),
                axes,
                _buckets(parameters.get(f"{PREFIX}pad_buckets.{name}"), f"{where}: buckets"),
            )
    for key in parameters:
        if key.startswith(PREFIX + "pad_buckets."):
            name = key[len(PREFIX + "pad_buckets.") :]
            if name not in padded:
                raise ModelLoadError(
                    f"{where}: parameter '{key}' needs '{PREFIX}pad.{name}' to pad the input"
                )
        if key.startswith(PREFIX + "cut."):
            name = key[len(PREFIX + "cut.") :]
            source = parameters[key]
            here = f"{where}: parameter '{key}'"
            if name not in outputs:
                raise ModelLoadError(f"{here}: the model has no output '{name}'")
            if source not in padded:
                raise ModelLoadError(f"{here}: '{source}' is not a padded input")
            out_axes = tuple(i for i, d in enumerate(outputs[name].dims) if d == -1)
            if len(out_axes) != len(padded[source].axes):
                raise ModelLoadError(
                    f"{here}: output '{name}' has {len(out_axes)} variable dims, input "
                    f"'{source}' pads {len(padded[source].axes)}"
                )
            cuts[name] = CutOutput(source, out_axes)
    return Padding(padded, cuts)


def _pad_value(text: str, spec: TensorSpec, where: str) -> int | float:
    kind = spec.datatype.numpy.kind
    try:
        if kind in "iub":
            return int(text)
        if kind == "f":
            return float(text)
    except ValueError:
        raise ModelLoadError(f"{where}: '{text}' is not a {spec.datatype.name} value") from None
    raise ModelLoadError(f"{where}: {spec.datatype.name} inputs cannot be padded")


def _buckets(text: str | None, where: str) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        values = sorted({int(v) for v in text.replace(",", " ").split()})
    except ValueError:
        raise ModelLoadError(f"{where}: '{text}' must be positive integers") from None
    if not values or values[0] < 1:
        raise ModelLoadError(f"{where}: '{text}' must be positive integers")
    return tuple(values)


def instance_total(config: mc.ModelConfig) -> int:
    """How many instances instance_plan() will make, before the profiles are validated.

    The repository needs it first, to share the cores among the instances' threads.
    """
    declared = sum(1 for key in config.parameters if key.startswith(PREFIX + "profile."))
    groups = config.instance_group or [mc.ModelInstanceGroup()]
    return sum(max(g.count, 1) * (len(g.profile) or max(declared, 1)) for g in groups)


def instance_plan(
    config: mc.ModelConfig,
    declared: Sequence[Profile],
    where: str,
    gpus: Discovery | None = None,
    gpu_only: bool = False,
) -> list[PlannedInstance]:
    """Every instance to create: its profile and its device, one entry per instance.

    Each instance group makes `count` instances (1 when unset) for each profile it lists in
    `profile` (Triton's field: profile numbers as strings), or for every profile when it lists
    none, so every profile has instances of its own and no instance ever switches profiles.
    KIND_GPU groups do so on each GPU they list in `gpus` (NVML indexes), or on every GPU
    `gpus` (the host's discovery) found; KIND_CPU and KIND_AUTO groups run on the CPU, except
    for a `gpu_only` backend (TensorRT), where KIND_AUTO means KIND_GPU and KIND_CPU is refused.
    """
    profiles = list(declared) or [UNBOUNDED]
    by_index = {str(p.index): p for p in profiles}
    plan: list[PlannedInstance] = []
    for group in config.instance_group or [mc.ModelInstanceGroup()]:
        kind = mc.ModelInstanceGroup.Kind.Name(group.kind)
        devices = [Device()]
        if gpu_only and kind == "KIND_CPU":
            raise ModelLoadError(
                f"{where}: instance_group kind KIND_CPU: a TensorRT plan runs on GPUs"
            )
        if kind == "KIND_GPU" or (gpu_only and kind == "KIND_AUTO"):
            devices = _gpu_devices(group, gpus, where)
        elif group.gpus:
            raise ModelLoadError(f"{where}: instance_group gpus needs kind KIND_GPU")
        if kind == "KIND_MODEL":
            raise ModelLoadError(f"{where}: instance_group kind KIND_MODEL is not supported")
        if group.count < 0:
            raise ModelLoadError(f"{where}: instance_group count must be >= 0, got {group.count}")
        chosen = profiles
        if group.profile:
            unknown = [p for p in group.profile if p not in by_index]
            if unknown:
                raise ModelLoadError(
                    f"{where}: instance_group profile {unknown} names no profile "
                    f"(the model has {sorted(by_index)})"
                )
            chosen = [by_index[p] for p in group.profile]
        for device in devices:
            for profile in chosen:
                plan.extend([PlannedInstance(profile, device)] * (group.count or 1))
    return plan


def _gpu_devices(group: mc.ModelInstanceGroup, gpus: Discovery | None, where: str) -> list[Device]:
    if gpus is None or not gpus.devices:
        reason = gpus.reason if gpus is not None else "GPUs were not looked for"
        raise ModelLoadError(f"{where}: instance_group kind KIND_GPU, but no usable GPU: {reason}")
    whole = sorted({d.ordinal for d in gpus.devices if d.ordinal >= 0})
    if not whole:
        raise ModelLoadError(
            f"{where}: KIND_GPU on MIG instances needs one worker process per instance: "
            "start the server with --workers gpu"
        )
    chosen = list(group.gpus) or whole
    missing = [g for g in chosen if g not in whole]
    if missing:
        raise ModelLoadError(f"{where}: instance_group gpus {missing} not found (GPUs: {whole})")
    return [Device("gpu", g) for g in chosen]
