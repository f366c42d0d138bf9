"""DAPO's soft overlong punishment (reward.overlong_penalty) and reward factories from YAML (`factory: true`),
checked against TRL's own get_soft_overlong_punishment."""

import pytest
import yaml

from reward import RewardContext, build_rewards, score
from selfimprove.config import RewardSpec
from selfimprove.errors import UserError
from selfimprove.options import bind
from tests.conftest import make_trace


def traces_of_lengths(*lengths):
    return [make_trace(group=f"g{i}", idx=i, completion_ids=[5] * n) for i, n in enumerate(lengths)]


def scored(traces, spec):
    rewards = build_rewards([spec])
    score(traces, rewards, RewardContext())
    return [tr.rewards[rewards[0].name] for tr in traces]


LENGTHS = (1, 48, 49, 52, 56, 63, 64, 65, 200)


def test_overlong_penalty_worked_numbers():
    # L_max 64, cache 16: 0 up to 48 tokens, then (48 - |y|) / 16 down to -1 at 64, -1 beyond
    values = scored(traces_of_lengths(*LENGTHS),
                    RewardSpec(fn="overlong_penalty", kwargs={"max_completion_len": 64, "soft_punish_cache": 16}))
    assert values == [0.0, 0.0, -0.0625, -0.25, -0.5, -0.9375, -1.0, -1.0, -1.0]
    # no cache: 0 up to L_max, then -1
    assert scored(traces_of_lengths(64, 65), RewardSpec(fn="overlong_penalty", kwargs={"max_completion_len": 64})) == [0.0, -1.0]


@pytest.mark.parametrize("kwargs, msg", [
    ({}, "kwargs.max_completion_len must be an integer >= 1"),
    ({"max_completion_len": 64, "soft_punish_cache": 65}, "kwargs.soft_punish_cache must be an integer in [0, max_completion_len=64]"),
])
def test_overlong_penalty_option_mistakes_are_one_line(kwargs, msg):
    with pytest.raises(UserError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        build_rewards([RewardSpec(fn="overlong_penalty", kwargs=kwargs)])


def test_a_factory_from_yaml_gives_trls_own_values():
    from trl.rewards import get_soft_overlong_punishment

    kwargs = {"max_completion_len": 64, "soft_punish_cache": 16}
    traces = traces_of_lengths(*LENGTHS)
    entry = yaml.safe_load("fn: trl.rewards:get_soft_overlong_punishment\nfactory: true\nname: overlong\n"
                           "kwargs: {max_completion_len: 64, soft_punish_cache: 16}")
    spec = bind(RewardSpec, entry, "rewards[0]")
    ours = scored(traces, RewardSpec(fn="overlong_penalty", kwargs=kwargs))
    theirs = get_soft_overlong_punishment(**kwargs)(completion_ids=[tr.completion.token_ids for tr in traces])
    via_factory = scored(traces, spec)
    assert ours == theirs == via_factory
    assert theirs[3] == -0.25


def test_a_factory_without_the_flag_or_with_wrong_options_is_one_line():
    kwargs = {"max_completion_len": 64, "soft_punish_cache": 16}
    with pytest.raises(UserError, match="nothing receives the completions; .* add `factory: true`"):
        build_rewards([RewardSpec(fn="trl.rewards:get_soft_overlong_punishment", kwargs=kwargs)])
    with pytest.raises(UserError, match=r"\(factory: true\) failed to build with kwargs \{'max_len': 3\}: TypeError"):
        build_rewards([RewardSpec(fn="trl.rewards:get_soft_overlong_punishment", kwargs={"max_len": 3}, factory=True)])
    with pytest.raises(UserError, match=r"\(factory: true\) returned a list, not a reward function"):
        build_rewards([RewardSpec(fn="overlong_penalty", kwargs={"traces": []}, factory=True)])
