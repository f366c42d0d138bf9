import pytest
import torch

from selfimprove.algorithms import grpo
from selfimprove.algorithms.common import group_advantages, kl_penalty
from selfimprove.trace import Trace
from tests.conftest import make_trace


def _trace(group, reward):
    return make_trace(group=group, reward=reward)


def test_group_advantages_sample_and_population_std():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    assert group_advantages(r, "group", "population", eps=0.0).tolist() == pytest.approx(
        [1.7320508, -0.5773503, -0.5773503, -0.5773503])
    assert group_advantages(r, "group", "sample", eps=0.0).tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5])
    assert group_advantages(r, "none").tolist() == [0.75, -0.25, -0.25, -0.25]


def test_prepare_gives_exact_zero_for_equal_groups_and_zero_loss_skips_them():
    traces = [_trace("a", 0.1)] * 3 + [_trace("b", 1.0), _trace("b", 0.0)]
    traces = [Trace.from_dict(t.to_dict()) for t in traces]
    kept = grpo.prepare(traces, grpo.Config())
    assert [t.advantage for t in kept[:3]] == [0.0, 0.0, 0.0]
    assert [grpo.zero_loss(t, grpo.Config()) for t in kept] == [True, True, True, False, False]
    assert not grpo.zero_loss(kept[0], grpo.Config(kl_coef=0.1))  # the KL term still has a gradient
    assert len(grpo.prepare(traces, grpo.Config(filter_groups=True))) == 2


def test_clipped_surrogate():
    cfg = grpo.Config(clip_low=0.2, clip_high=0.28)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]], dtype=torch.float64)).requires_grad_(True)
    old = torch.zeros((1, 3), dtype=torch.float64)
    loss = grpo.token_loss(logp, old, torch.tensor([1.0], dtype=torch.float64), cfg)
    # A > 0: ratio 1.5 is clipped at 1.28 (no gradient), 0.5 is not clipped (min picks it), 1.1 inside
    assert loss.tolist()[0] == pytest.approx([-1.28, -0.5, -1.1])
    loss.sum().backward()
    assert logp.grad.tolist()[0] == pytest.approx([0.0, -0.5, -1.1])


def test_kl_estimators():

    lp, ref = torch.tensor([-1.0]), torch.tensor([-1.5])
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(0.5)
    assert kl_penalty(lp, ref, "k3").item() == pytest.approx(torch.exp(torch.tensor(-0.5)).item() + 0.5 - 1)
    assert kl_penalty(lp, lp, "k3").item() == 0.0
