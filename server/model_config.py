"""config.pbtxt: parse it, refuse what Ferry does not support, complete it from the model file.

The result, `ModelSettings`, is everything the rest of the server needs about one model: the
completed config (what the ModelConfig RPC returns), the tensor signature requests are checked
against, the batching options and the instances to create.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.message import Message

from ferry.common.datatypes import DataType, from_config_type
from ferry.common.errors import ModelLoadError
from ferry.engines.base import Profile, TensorSpec
from ferry.engines.cuda.devices import Discovery
from ferry.engines.loading import Artifact, Loader, PlannedInstance
from ferry.proto import model_config_pb2 as mc
from ferry.scheduler.config import BatchingConfig
from ferry.scheduler.runner import reserved_positions
from ferry.scheduler.shapes import Padding
from ferry.server import scheduling_config as scheduling
from ferry.server.codec import Signature

# Triton config fields that exist but that Ferry does not implement. A field set to anything but
# its default is refused with its path, so a model never silently runs differently than written.
_UNSUPPORTED: dict[str, tuple[str, ...]] = {
    "inference.ModelOptimizationPolicy": (
        "priority",
        "input_pinned_memory",
        "output_pinned_memory",
    ),
    "inference.ModelOptimizationPolicy.Cuda": ("busy_wait_events", "output_copy_stream"),
    "inference.ModelInput": ("is_shape_tensor", "allow_ragged_batch", "optional"),
    "inference.ModelOutput": ("is_shape_tensor",),
    "inference.ModelInstanceGroup": ("passive", "host_policy"),
}
# Top-level Triton fields that Ferry's schema does not even declare.
_TRITON_ONLY = {
    "sequence_batching",
    "ensemble_scheduling",
    "batch_input",
    "batch_output",
    "model_operations",
    "model_transaction_policy",
    "model_repository_agents",
    "response_cache",
    "model_metrics",
    "cc_model_filenames",
    "metric_tags",
    "rate_limiter",
    "secondary_devices",
    "is_non_linear_format_io",
    "graph",
    "execution_accelerators",
    "gather_kernel_buffer_threshold",
    "eager_batching",
    "graph_spec",
}


_TOP_LEVEL = {f.name for f in mc.ModelConfig.DESCRIPTOR.fields} | _TRITON_ONLY


@dataclass(frozen=True)
class ModelSettings:
    """One model's completed configuration, ready to build engines and a scheduler from."""

    name: str
    config: mc.ModelConfig
    backend: str
    signature: Signature
    batching: BatchingConfig
    profiles: tuple[Profile, ...]  # declared in the config; () = unconstrained
    padding: Padding
    instances: tuple[PlannedInstance, ...]  # the profile and device of each instance
    parameters: dict[str, str]

    @property
    def instance_count(self) -> int:
        return len(self.instances)


def parse(text: str, where: str) -> mc.ModelConfig:
    """Parse config.pbtxt text. An error names the line and column and says what protobuf's text
    parser found; a field in the wrong message (a missing '}' or ']' before it) says so."""
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        found = str(exc).split(" : ", 1)[-1].rstrip(".")
        place = f"{where}:{exc.GetLine()}:{exc.GetColumn()}"
        marker = 'has no field named "'
        if marker in found:
            field = found.split(marker, 1)[1].split('"', 1)[0]
            owner = found.split('Message type "', 1)[-1].split('"', 1)[0].rsplit(".", 1)[-1]
            if owner != "ModelConfig" and field in _TOP_LEVEL:
                raise ModelLoadError(
                    f"{place}: field '{field}' is not a field of {owner}: is a '}}' or ']' "
                    f"missing before it? ({found})"
                ) from None
            kind = "a Triton field Ferry does not support" if field in _TRITON_ONLY else "unknown"
            raise ModelLoadError(f"{place}: field '{field}' is {kind} ({found})") from None
        raise ModelLoadError(f"{place}: cannot parse: {found}") from None
    _refuse_unsupported(config, where, "")
    return config


def check(config: mc.ModelConfig, where: str) -> None:
    """Refuse a config (one sent with a load request) that sets what Ferry does not support."""
    _refuse_unsupported(config, where, "")


def _refuse_unsupported(message: Message, where: str, path: str) -> None:
    banned = _UNSUPPORTED.get(message.DESCRIPTOR.full_name, ())
    for field, value in message.ListFields():
        here = f"{path}.{field.name}" if path else field.name
        if field.name in banned:
            raise ModelLoadError(f"{where}: field '{here}' is not supported by Ferry yet")
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            items = (
                value.values() if field.message_type.fields_by_name["value"].message_type else ()
            )
            for item in items:
                _refuse_unsupported(item, where, here)
        elif field.is_repeated:
            for i, item in enumerate(value):
                _refuse_unsupported(item, where, f"{here}[{i}]")
        else:
            _refuse_unsupported(value, where, here)


def complete(
    config: mc.ModelConfig,
    name: str,
    artifact: Artifact,
    loader: Loader,
    *,
    had_file: bool,
    default_max_batch_size: int,
    default_max_queue_bytes: int = 0,
    gpus: Discovery | None = None,
    where: str,
    folder: Path | None = None,
    default_slo_p99_ms: float | None = None,
) -> ModelSettings:
    """Fill what the config leaves out from the model file, and check the two agree.

    A TensorRT plan carries its own optimization profiles (`artifact.own_profiles`); then the
    config may not declare `ferry.profile.*` as well.
    """
    config = _copy(config)
    if config.name and config.name != name:
        raise ModelLoadError(f"{where}: name '{config.name}' differs from the folder name '{name}'")
    config.name = name
    if not config.backend:
        config.backend = loader.backend
    if not config.platform:
        config.platform = loader.platform
    if not config.default_model_filename:
        config.default_model_filename = loader.filename
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    engine_inputs, engine_outputs = artifact.inputs, artifact.outputs
    if config.max_batch_size < 0:
        raise ModelLoadError(f"{where}: max_batch_size must be >= 0, got {config.max_batch_size}")
    if (
        not had_file
        and default_max_batch_size > 0
        and all(s.dims and s.dims[0] == -1 for s in (*engine_inputs, *engine_outputs))
    ):
        # No config.pbtxt: a model whose every tensor has a free first dim is batchable.
        config.max_batch_size = default_max_batch_size
        config.dynamic_batching.SetInParent()
    mbs = config.max_batch_size
    inputs, reshape_inputs = _match(config.input, engine_inputs, mbs, "input", where)
    outputs, reshape_outputs = _match(config.output, engine_outputs, mbs, "output", where)
    labels = _labels(config.output, folder, where)
    if not config.input:
        config.input.extend(
            mc.ModelInput(name=s.name, data_type=_config_type(s.datatype), dims=s.dims)
            for s in inputs
        )
    if not config.output:
        config.output.extend(
            mc.ModelOutput(name=s.name, data_type=_config_type(s.datatype), dims=s.dims)
            for s in outputs
        )
    missing = [s.name for s in engine_inputs if s.name not in {i.name for i in inputs}]
    if missing:
        raise ModelLoadError(f"{where}: the model needs input(s) {missing} that the config lacks")
    parameters = {k: v.string_value for k, v in config.parameters.items()}
    scheduling.check_keys(parameters, where)
    batching = scheduling.batching(
        config, parameters, default_max_queue_bytes, where, default_slo_p99_ms
    )
    by_name = {s.name: s for s in inputs}
    profiles = scheduling.profiles(parameters, by_name, where)
    engine_profiles = artifact.own_profiles
    if engine_profiles is not None:
        if profiles:
            raise ModelLoadError(
                f"{where}: parameter '{scheduling.PREFIX}profile.*': the plan's own "
                "optimization profiles are served; remove the parameter"
            )
        profiles = tuple(engine_profiles(mbs > 0))
        largest = max((p.max_rows for p in profiles), default=0)
        if mbs > largest > 0:
            raise ModelLoadError(
                f"{where}: max_batch_size {mbs} is larger than the plan's largest profile "
                f"allows ({largest} rows)"
            )
    instances = _reserve(
        tuple(scheduling.instance_plan(config, profiles, where, gpus, gpu_only=artifact.gpu_only)),
        batching.reserved_instances,
        where,
    )
    _describe_instances(config, instances)
    return ModelSettings(
        name=name,
        config=config,
        backend=loader.backend,
        signature=Signature(
            by_name,
            {s.name: s for s in outputs},
            mbs,
            utf8_bytes=loader.utf8_bytes,
            split_oversized=batching.split_oversized,
            reshape_inputs=reshape_inputs,
            reshape_outputs=reshape_outputs,
            labels=labels,
        ),
        batching=batching,
        profiles=profiles,
        padding=scheduling.padding(
            parameters, by_name, {s.name: s for s in outputs}, mbs > 0, where
        ),
        instances=instances,
        parameters=parameters,
    )


def _describe_instances(config: mc.ModelConfig, instances: Sequence[PlannedInstance]) -> None:
    """Fill the instance groups as Triton reports them: a config without any gets the one
    group that was planned, and every group a name ("<model>_<index>") and a count."""
    if not config.instance_group:
        on_gpu = [i for i in instances if i.device.kind == "gpu"]
        group = config.instance_group.add(count=1)  # one per profile and device, as planned
        group.kind = mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU
        group.gpus.extend(sorted({i.device.index for i in on_gpu}))
    for index, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{config.name}_{index}"
        if group.count == 0:
            group.count = 1


def _reserve(
    instances: tuple[PlannedInstance, ...], reserved: int, where: str
) -> tuple[PlannedInstance, ...]:
    """Mark the instances the scheduler will reserve for the highest priority level (its own
    rule, so the backend gives resources to the same ones). Every profile must keep an instance
    for the levels that reserved instances refuse."""
    if reserved:
        per_profile = Counter(i.profile.index for i in instances)
        for index, count in sorted(per_profile.items()):
            if count <= reserved:
                raise ModelLoadError(
                    f"{where}: parameter 'ferry.reserved_instances' is {reserved}, but profile "
                    f"{index} has {count} instance(s): at least one must serve every priority "
                    "level (add instances with instance_group count)"
                )
    kept = reserved_positions([i.profile.index for i in instances], reserved)
    return tuple(replace(i, reserved=n in kept) for n, i in enumerate(instances))


def _copy(config: mc.ModelConfig) -> mc.ModelConfig:
    copy = mc.ModelConfig()
    copy.CopyFrom(config)
    return copy


def _config_type(dt: DataType) -> str:
    return dt.config_name


def _match(
    declared: Sequence[mc.ModelInput] | Sequence[mc.ModelOutput],
    actual: Sequence[TensorSpec],
    mbs: int,
    kind: str,
    where: str,
) -> tuple[list[TensorSpec], dict[str, tuple[int, ...]]]:
    """Config tensors checked against the model file's (the file's own when none are declared),
    and the model's dims of each tensor the config reshapes."""
    by_name = {s.name: s for s in actual}
    if not declared:
        specs = []
        for s in actual:
            dims = s.dims
            if mbs > 0:
                if not dims or dims[0] != -1:
                    raise ModelLoadError(
                        f"{where}: {kind} '{s.name}' has a fixed first dimension {list(dims)}, so "
                        "the model cannot batch; set max_batch_size: 0"
                    )
                dims = dims[1:]
            specs.append(TensorSpec(s.name, s.datatype, dims))
        return specs, {}
    names = [tensor.name for tensor in declared]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ModelLoadError(f"{where}: {kind} {twice} declared more than once")
    specs = []
    reshaped: dict[str, tuple[int, ...]] = {}
    for tensor in declared:
        where_t = f"{where}: {kind} '{tensor.name}'"
        real = by_name.get(tensor.name)
        if real is None:
            raise ModelLoadError(f"{where_t} is not in the model (it has: {', '.join(by_name)})")
        dt = config_datatype(tensor.data_type, where_t)
        if dt != real.datatype:
            raise ModelLoadError(
                f"{where_t}: data_type {dt.config_name} differs from the model's "
                f"{real.datatype.config_name}"
            )
        dims = tuple(int(d) for d in tensor.dims)
        if any(d < -1 or d == 0 for d in dims):
            raise ModelLoadError(f"{where_t}: dims {list(dims)} must be positive or -1")
        model_dims = dims
        if tensor.HasField("reshape"):
            model_dims = tuple(int(d) for d in tensor.reshape.shape)
            if -1 in dims or any(d < 1 for d in model_dims) or math.prod(dims) != math.prod(
                model_dims
            ):
                raise ModelLoadError(
                    f"{where_t}: reshape {list(model_dims)} must hold the same fixed number of "
                    f"elements as dims {list(dims)} (Ferry reshapes fixed dims only)"
                )
            if model_dims != dims:
                reshaped[tensor.name] = model_dims
        full = ((-1,) if mbs > 0 else ()) + model_dims
        fits = len(full) == len(real.dims) and all(
            r == -1 or c == r for c, r in zip(full, real.dims, strict=True)
        )
        if not fits or (mbs > 0 and real.dims[0] != -1):
            raise ModelLoadError(
                f"{where_t}: {'reshape' if model_dims != dims else 'dims'} {list(model_dims)} "
                f"{'(plus the batch dimension) ' if mbs > 0 else ''}do not fit the model's "
                f"shape {list(real.dims)}"
            )
        specs.append(TensorSpec(tensor.name, dt, dims))
    return specs, reshaped


def config_datatype(value: int, where: str) -> DataType:
    """The datatype a config's `data_type` enum names; ModelLoadError when missing or invalid."""
    try:
        return from_config_type(mc.DataType.Name(value))
    except (KeyError, ValueError):
        raise ModelLoadError(f"{where}: data_type is missing or invalid") from None


def _labels(
    outputs: Sequence[mc.ModelOutput], folder: Path | None, where: str
) -> dict[str, tuple[str, ...]]:
    """Each output's `label_filename`, read from the model folder: one label per line, the
    line number being the class index."""
    labels: dict[str, tuple[str, ...]] = {}
    for output in outputs:
        if not output.label_filename:
            continue
        name = output.label_filename
        if folder is None or Path(name).name != name:
            raise ModelLoadError(
                f"{where}: output '{output.name}': label_filename '{name}' must name a file in "
                "the model's folder"
            )
        try:
            text = (folder / name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelLoadError(
                f"{where}: output '{output.name}': cannot read label_filename '{name}': {exc}"
            ) from None
        labels[output.name] = tuple(text.splitlines())
    return labels


def read(path: Path) -> mc.ModelConfig | None:
    """The parsed config.pbtxt at `path`, or None when the model has none."""
    if not path.exists():
        return None
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file; config.pbtxt must be a text file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc}") from None
    return parse(text, os.fspath(path))
