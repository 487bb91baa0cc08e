"""config.pbtxt to scheduler settings: Triton's queue policy fields, Ferry's `ferry.*` parameters
(profiles, padding, splitting, byte bound), instance plans, and the exact error for each mistake."""

from __future__ import annotations

import pytest

from ferry.common.datatypes import DATATYPES
from ferry.common.errors import ModelLoadError
from ferry.engines.base import TensorSpec
from ferry.engines.cuda.devices import Discovery, GpuDevice
from ferry.engines.loading import Artifact
from ferry.engines.onnxruntime_loader import OnnxRuntimeLoader
from ferry.scheduler import TimeoutAction
from ferry.server.model_config import ModelSettings, complete, parse
from ferry.server.scheduling_config import instance_plan

HISTORY = TensorSpec("history", DATATYPES["INT64"], (-1, -1, -1))  # batch, then 2 free dims
USER = TensorSpec("user", DATATYPES["FP32"], (-1, 16))
SCORE = TensorSpec("score", DATATYPES["FP32"], (-1, 1))
SEQ = TensorSpec("seq", DATATYPES["FP32"], (-1, -1, -1))


def settle(text: str) -> ModelSettings:
    return complete(
        parse("max_batch_size: 8\n" + text, "m/config.pbtxt"),
        "m",
        Artifact([HISTORY, USER], [SCORE, SEQ]),
        OnnxRuntimeLoader(),
        had_file=True,
        default_max_batch_size=4,
        default_max_queue_bytes=1000,
        where="m/config.pbtxt",
    )


def params(**values: str) -> str:
    entries = ", ".join(
        f'{{ key: "{k.replace("__", ".")}" value {{ string_value: "{v}" }} }}'
        for k, v in values.items()
    )
    return f"parameters [ {entries} ]"


def test_queue_policies_are_read_as_triton_defines_them() -> None:
    settings = settle(
        "dynamic_batching {\n"
        "  priority_levels: 3 default_priority_level: 2 preserve_ordering: true\n"
        "  default_queue_policy { default_timeout_microseconds: 5000 max_queue_size: 7 }\n"
        "  priority_queue_policy { key: 1 value { timeout_action: DELAY"
        " default_timeout_microseconds: 100 allow_timeout_override: true } }\n"
        "}"
    )
    batching = settings.batching
    assert batching.priority_levels == 3 and batching.default_priority == 2
    assert batching.preserve_ordering
    assert batching.level_of(0) == 1  # default level 2 -> queue index 1
    assert batching.policy(1).default_timeout_s == pytest.approx(0.005)
    assert batching.policy(1).max_queue_size == 7
    high = batching.policy(0)
    assert high.timeout_action is TimeoutAction.DELAY and high.allow_timeout_override
    assert high.timeout_s(0.00005) == pytest.approx(0.00005)
    assert high.timeout_s(1.0) == pytest.approx(0.0001)  # a request cannot lengthen it
    assert batching.max_queue_bytes == 1000  # the server's default
    assert batching.split_oversized


def test_profiles_padding_and_flags_from_parameters() -> None:
    settings = settle(
        "dynamic_batching { }\n"
        + params(
            ferry__profile__0="history:1x1..4x64",
            ferry__profile__1="history:1x1..4x128..8x512 user:16..16",
            ferry__pad__history="0",
            ferry__pad_buckets__history="64, 128,256",
            ferry__cut__seq="history",
            ferry__split_oversized="false",
            ferry__max_queue_bytes="4096",
        )
    )
    first, second = settings.profiles
    assert str(first.ranges["history"]) == "[1, 1]..[4, 64]"
    assert second.ranges["history"].opt == (4, 128)
    assert second.ranges["user"].max == (16,)
    padded = settings.padding.inputs["history"]
    assert padded.value == 0 and padded.axes == (0, 1) and padded.buckets == (64, 128, 256)
    assert settings.padding.outputs["seq"].input == "history"
    assert not settings.batching.split_oversized and not settings.signature.split_oversized
    assert settings.batching.max_queue_bytes == 4096
    assert [i.profile.index for i in settings.instances] == [0, 1]  # one instance per profile


def test_instance_groups_choose_their_profiles() -> None:
    settings = settle(
        params(ferry__profile__0="history:1x1..4x4", ferry__profile__1="history:1x1..8x8")
        + '\ninstance_group [ { count: 2 profile: ["1"] }, { count: 1 } ]'
    )
    assert [i.profile.index for i in settings.instances] == [1, 1, 0, 1]
    assert {str(i.device) for i in settings.instances} == {"cpu"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (params(ferry__bogus="1"), "parameter 'ferry.bogus' is unknown to Ferry"),
        (params(ferry__profile__1="history:1x1..2x2"), "numbered 0..0 without gaps, got [1]"),
        (params(ferry__profile__0="nope:1..2"), "'nope:1..2' must be <input>:<min>..<max>"),
        (
            params(ferry__profile__0="history:1..2"),
            "input 'history' has 2 dims [-1, -1], the range",
        ),
        (params(ferry__profile__0="history:4x4..2x2"), "need 0 <= min <= opt <= max"),
        (params(ferry__profile__0="user:1..8"), "input 'user' dim 0 is fixed at 16, outside"),
        (params(ferry__pad__user="0"), "input 'user' has no variable (-1) dims to pad"),
        (params(ferry__pad__history="zero"), "'zero' is not a INT64 value"),
        (params(ferry__pad_buckets__history="8"), "needs 'ferry.pad.history'"),
        (params(ferry__pad__history="0", ferry__cut__score="history"), "output 'score' has 0"),
        (params(ferry__cut__seq="user"), "'user' is not a padded input"),
        (params(ferry__split_oversized="maybe"), "must be true or false"),
        (params(ferry__max_queue_bytes="-1"), "must be an integer >= 0"),
        (params(ferry__slo__p99_ms="fast"), "'ferry.slo.p99_ms' must be a number of milliseconds"),
        (params(ferry__slo__p99_ms="0"), "'ferry.slo.p99_ms' must be a number of milliseconds"),
        (params(ferry__slo__p99_ms="-5"), "'ferry.slo.p99_ms' must be a number of milliseconds"),
        (params(ferry__slo__p99_ms="10", ferry__slo__refuse="maybe"), "must be true or false"),
        (params(ferry__slo__refuse="false"), "'ferry.slo.refuse' needs a budget"),
        (
            params(ferry__profile__0="history:1x1..2x2") + '\ninstance_group { profile: ["3"] }',
            "instance_group profile ['3'] names no profile",
        ),
        (
            "dynamic_batching { priority_levels: 2 default_priority_level: 3 }",
            "must be in 1..priority_levels (2)",
        ),
        (
            "dynamic_batching { priority_levels: 2 priority_queue_policy { key: 5 value { } } }",
            "priority_queue_policy for level 5",
        ),
    ],
)
def test_mistakes_are_load_errors_that_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        settle(text)
    assert message in str(info.value)


def found(*indexes: int, mig: bool = False) -> Discovery:
    return Discovery(
        tuple(
            GpuDevice(
                f"{'MIG' if mig else 'GPU'}-{i}",
                "H200",
                1 << 37,
                i,
                "GPU-p" if mig else "",
                -1 if mig else i,
            )
            for i in indexes
        ),
        len(indexes),
    )


def plan(text: str, gpus: Discovery | None) -> list[str]:
    config = parse(text, "m/config.pbtxt")
    return [str(i.device) for i in instance_plan(config, (), "m/config.pbtxt", gpus)]


def test_kind_gpu_places_count_instances_on_each_gpu() -> None:
    assert plan("instance_group { kind: KIND_GPU count: 2 }", found(0, 1)) == [
        "gpu:0",
        "gpu:0",
        "gpu:1",
        "gpu:1",
    ]
    assert plan("instance_group { kind: KIND_GPU gpus: [1] }", found(0, 1)) == ["gpu:1"]
    assert plan("instance_group [ { kind: KIND_CPU }, { kind: KIND_GPU } ]", found(0)) == [
        "cpu",
        "gpu:0",
    ]


@pytest.mark.parametrize(
    ("text", "gpus", "message"),
    [
        (
            "instance_group { kind: KIND_GPU }",
            Discovery(reason="no driver"),
            "no usable GPU: no driver",
        ),
        ("instance_group { kind: KIND_GPU gpus: [3] }", found(0), "gpus [3] not found (GPUs: [0])"),
        ("instance_group { kind: KIND_GPU }", found(0, mig=True), "one worker process per"),
        ("instance_group { kind: KIND_CPU gpus: [0] }", found(0), "gpus needs kind KIND_GPU"),
    ],
)
def test_kind_gpu_mistakes_name_the_problem(text: str, gpus: Discovery, message: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        plan(text, gpus)
    assert message in str(info.value)


def test_reserved_instances_are_read_and_checked() -> None:
    two = "instance_group [ { count: 2 kind: KIND_CPU } ]\n"
    levels = "dynamic_batching { priority_levels: 2 }\n"
    settings = settle(levels + two + params(ferry__reserved_instances="1"))
    assert settings.batching.reserved_instances == 1
    with pytest.raises(ModelLoadError, match=r"reserved_instances \(1\) needs priority_levels"):
        settle("dynamic_batching { }\n" + two + params(ferry__reserved_instances="1"))
    with pytest.raises(ModelLoadError, match=r"is 2, but profile 0 has 2 instance\(s\)"):
        settle(levels + two + params(ferry__reserved_instances="2"))
    with pytest.raises(
        ModelLoadError, match=r"'ferry\.reserved_instances' must be an integer >= 0"
    ):
        settle(levels + two + params(ferry__reserved_instances="one"))


def test_a_latency_budget_is_read_with_the_configured_delay_as_its_limit() -> None:
    budget = settle(
        "dynamic_batching { max_queue_delay_microseconds: 500 }\n"
        + params(ferry__slo__p99_ms="12.5", ferry__slo__refuse="false")
    ).batching.slo
    assert budget is not None
    assert (budget.p99_s, budget.refuse_early, budget.delay_limit_s) == (0.0125, False, 0.0005)
    assert settle("dynamic_batching { }").batching.slo is None
