"""NFT against the worked numbers of algorithms.md section 6.2 and its on-policy equivalences."""

import math

import pytest
import torch

from selfimprove.algorithms import grpo, nft
from selfimprove.algorithms.common import aggregate, group_advantages
from tests.conftest import make_trace


def per_token(R: float, correct: float, rhat: float = 0.25, **cfg_kw):
    """Loss value, dL/dR and dL/dlog pi for one token with ratio R."""
    cfg = nft.Config(omega="1", **cfg_kw)
    logp = torch.tensor([[math.log(R)]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros((1, 1), dtype=torch.float64)
    loss = nft.token_loss(logp, old, torch.tensor([correct], dtype=torch.float64),
                          torch.tensor([rhat], dtype=torch.float64), cfg)
    loss.sum().backward()
    d_logpi = logp.grad.item()
    return loss.item(), d_logpi / R, d_logpi  # dL/dR = dL/dlogpi / R


def test_positive_token_is_nll_on_the_ratio():
    value, _, d_logpi = per_token(1.2, correct=1.0)
    assert value == pytest.approx(-0.18232, abs=1e-5)
    assert d_logpi == pytest.approx(-1.0, abs=1e-12)


def test_negative_token_clipped_value_keeps_its_gradient():
    value, d_r, d_logpi = per_token(1.2, correct=0.0)
    assert value == pytest.approx(0.0, abs=1e-12)  # x = 0.93333 clipped to eps = 1: -log 1
    assert d_r == pytest.approx(0.33333, abs=1e-5)
    assert d_logpi == pytest.approx(0.40000, abs=1e-5)


def test_negative_token_below_one():
    value, d_r, d_logpi = per_token(0.8, correct=0.0)
    assert value == pytest.approx(-0.064539, abs=1e-6)
    assert d_r == pytest.approx(0.31250, abs=1e-5)
    assert d_logpi == pytest.approx(0.25000, abs=1e-5)


def _coefficients(loss_fn):
    """dL/dlog pi per sample for rewards [1, 0, 0, 0], on-policy (R = 1), one token each."""
    logp = torch.full((4, 1), -1.0, dtype=torch.float64, requires_grad=True)
    old = logp.detach().clone()
    loss_fn(logp, old).sum().backward()
    return logp.grad.squeeze(-1).tolist()


REWARDS = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)


def test_nft_sqrt_omega_equals_grpo_with_population_std():
    adv = group_advantages(REWARDS, "group", "population", eps=0.0)
    g = _coefficients(lambda lp, old: grpo.token_loss(lp, old, adv, grpo.Config()))
    rate = torch.full((4,), 0.25, dtype=torch.float64)
    n = _coefficients(lambda lp, old: nft.token_loss(lp, old, REWARDS, rate, nft.Config(omega="sqrt")))
    assert g == pytest.approx([-1.73205, 0.57735, 0.57735, 0.57735], abs=1e-5)
    assert n == pytest.approx(g, abs=1e-9)


def test_nft_default_omega_equals_dr_grpo():
    adv = group_advantages(REWARDS, "none")
    g = _coefficients(lambda lp, old: grpo.token_loss(lp, old, adv, grpo.Config(scale_rewards="none")))
    rate = torch.full((4,), 0.25, dtype=torch.float64)
    n = _coefficients(lambda lp, old: nft.token_loss(lp, old, REWARDS, rate, nft.Config()))
    assert g == pytest.approx([-0.75, 0.25, 0.25, 0.25], abs=1e-12)
    assert n == pytest.approx(g, abs=1e-12)


def test_log_ratio_clamp_and_rhat_clamp():
    cfg = nft.Config(omega="1")
    logp = torch.tensor([[20.0]], dtype=torch.float64, requires_grad=True)
    loss = nft.token_loss(logp, torch.zeros((1, 1), dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64),
                          torch.tensor([0.5], dtype=torch.float64), cfg)
    assert loss.item() == pytest.approx(-10.0)  # log R clamped at 10
    loss.sum().backward()
    assert logp.grad.item() == 0.0  # beyond the clamp: no gradient
    # r_hat = 0 is clamped to 0.02: omega = 1 - 0.02
    cfg = nft.Config()
    logp = torch.zeros((1, 1), dtype=torch.float64, requires_grad=True)
    loss = nft.token_loss(logp, torch.zeros((1, 1), dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64),
                          torch.tensor([0.0], dtype=torch.float64), cfg)
    loss.sum().backward()
    assert logp.grad.item() == pytest.approx(-0.98)


def test_rft_mode_has_no_negative_term():
    cfg = nft.Config(neg_weight=0.0)
    logp = torch.tensor([[0.3, -0.2]], dtype=torch.float64, requires_grad=True)
    loss = nft.token_loss(logp, torch.zeros((1, 2), dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64),
                          torch.tensor([0.5], dtype=torch.float64), cfg)
    loss.sum().backward()
    assert loss.abs().sum().item() == 0.0 and logp.grad.abs().sum().item() == 0.0


def test_constant_and_token_mean_reductions():
    tok = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    assert aggregate(tok, mask, "constant", 5, 2, 8, 1000.0).item() == pytest.approx(15 / 1000)
    assert aggregate(tok, mask, "token-mean", 5, 2, 8, 1000.0).item() == pytest.approx(15 / 5)
    assert aggregate(tok, mask, "seq-mean", 5, 2, 8, 1000.0).item() == pytest.approx((2.0 + 4.5) / 2)
    assert aggregate(tok, mask, "dr-grpo", 5, 2, 8, 1000.0).item() == pytest.approx(15 / 16)


def _trace(group, reward):
    return make_trace(group=group, reward=reward)


def test_prepare_labels_rates_and_drops_uninformative_groups():
    traces = [_trace("a", 1.0), _trace("a", 0.0), _trace("a", 0.0), _trace("a", 0.0),
              _trace("b", 1.0), _trace("b", 1.0), _trace("c", 0.0), _trace("c", 0.2)]
    kept = nft.prepare(traces, nft.Config())
    assert [tr.group_id for tr in kept] == ["a"] * 4
    assert [tr.meta["nft.correct"] for tr in kept] == [1.0, 0.0, 0.0, 0.0]
    assert {tr.meta["nft.correct_rate"] for tr in kept} == {0.25}
    assert len(nft.prepare(traces, nft.Config(filter_groups=False))) == 8
