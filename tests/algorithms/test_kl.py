"""KL estimators (issue 13): k1 only as a reward penalty, k3 and the exact per-token KL in the loss; the
gradient each one gives, checked against autograd of the true KL on small categorical distributions."""

import pytest
import torch

from selfimprove.algorithms import get_algorithm, grpo, score
from selfimprove.algorithms.common import _ExactKL, aggregate, exact_kl, kl_errors, kl_penalty, sequence_kl
from selfimprove.errors import UserError
from selfimprove.logprobs import mismatch_weights, turn_kl_sums
from selfimprove.recipe import bind_recipe
from tests.conftest import make_trace

Z = torch.tensor([0.3, -1.2, 0.8, 0.1], dtype=torch.float64)  # policy logits over a 4-token vocabulary
Q = torch.log_softmax(torch.tensor([-0.5, 0.4, 0.2, 1.0], dtype=torch.float64), -1)  # the reference


def expected_grad(estimator: str) -> torch.Tensor:
    """E_{v ~ pi}[grad of the estimator as a loss term at token v] (exact sum over the vocabulary)."""
    z = Z.clone().requires_grad_(True)
    lp = torch.log_softmax(z, -1)
    (lp.exp().detach() * kl_penalty(lp, Q, estimator)).sum().backward()
    return z.grad


def true_grad(reverse: bool) -> torch.Tensor:
    z = Z.clone().requires_grad_(True)
    lp = torch.log_softmax(z, -1)
    kl = (Q.exp() * (Q - lp)).sum() if reverse else (lp.exp() * (lp - Q)).sum()  # KL(ref||pi) or KL(pi||ref)
    kl.backward()
    return z.grad


def test_k1_in_the_loss_has_zero_expected_gradient_and_k3_follows_kl_ref_pi():
    assert expected_grad("k1").abs().max().item() < 1e-15
    assert expected_grad("k3").tolist() == pytest.approx(true_grad(reverse=True).tolist(), abs=1e-12)
    assert not torch.allclose(expected_grad("k3"), true_grad(reverse=False))  # not KL(pi || ref)'s
    lp, ref = torch.tensor([-1.0]), torch.tensor([-1.5])  # worked values: k1 = 0.5, k3 = e^-0.5 + 0.5 - 1
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(0.5)
    assert kl_penalty(lp, ref, "k3").item() == pytest.approx(0.1065307, abs=1e-6)


def test_k1_in_the_reward_gives_the_gradient_of_kl_pi_ref():
    """REINFORCE on r - beta * k1 (detached): E[grad log pi (r - beta log(pi/ref))] = grad (E r - beta KL(pi||ref))."""
    r, beta = torch.tensor([1.0, 0.0, 0.5, 0.0], dtype=torch.float64), 0.3
    z = Z.clone().requires_grad_(True)
    lp = torch.log_softmax(z, -1)
    value = (r - beta * (lp - Q)).detach()
    (lp.exp().detach() * value * lp).sum().backward()  # sum_v pi_v * value_v * grad log pi_v
    z2 = Z.clone().requires_grad_(True)
    lp2 = torch.log_softmax(z2, -1)
    ((lp2.exp() * r).sum() - beta * (lp2.exp() * (lp2 - Q)).sum()).backward()
    assert z.grad.tolist() == pytest.approx(z2.grad.tolist(), abs=1e-12)
    assert sequence_kl([-1.0, -2.0], [-1.5, -1.0]) == pytest.approx(0.5 - 1.0)


def test_exact_kl_value_and_gradient_in_chunks(monkeypatch):
    monkeypatch.setattr(_ExactKL, "CHUNK", 2)  # 5 rows: chunks of 2, 2, 1
    torch.manual_seed(0)
    z = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    ref = torch.log_softmax(torch.randn(5, 7, dtype=torch.float64), -1)
    w = torch.randn(5, dtype=torch.float64)
    lp = torch.log_softmax(z, -1)
    kl = exact_kl(lp.reshape(1, 5, 7), ref.reshape(1, 5, 7)).reshape(5)
    naive = (lp.exp() * (lp - ref)).sum(-1)
    assert kl.tolist() == pytest.approx(naive.tolist(), abs=1e-12)
    (kl * w).sum().backward()
    mine = z.grad.clone()
    z.grad = None
    lp = torch.log_softmax(z, -1)
    ((lp.exp() * (lp - ref)).sum(-1) * w).sum().backward()
    assert mine.flatten().tolist() == pytest.approx(z.grad.flatten().tolist(), abs=1e-12)
    # worked numbers: pi = (0.5, 0.5), ref = (0.25, 0.75): KL = 0.5 ln 2 + 0.5 ln(2/3)
    two = exact_kl(torch.log(torch.tensor([[0.5, 0.5]])), torch.log(torch.tensor([[0.25, 0.75]])))
    assert two.item() == pytest.approx(0.1438410, abs=1e-6)


def test_the_grpo_loss_adds_beta_times_the_exact_kl():
    cfg = grpo.Config(kl_coef=0.1, kl_estimator="full")
    lp = torch.log_softmax(torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]]]), -1)
    ref = torch.log_softmax(torch.zeros(1, 2, 3), -1)
    logp = lp[..., 0]
    batch = {"policy_logsoftmax": lp, "ref_logsoftmax": ref, "old_logp": logp.detach(), "advantage": torch.zeros(1),
             "mask": torch.ones(1, 2)}
    tok, metrics = grpo.loss(batch, logp, cfg)
    want = (lp.exp() * (lp - ref)).sum(-1)
    assert tok.tolist()[0] == pytest.approx((0.1 * want).tolist()[0], abs=1e-6)
    assert metrics["kl"] == pytest.approx(want.mean().item(), abs=1e-6)


def test_k1_in_the_loss_is_an_error_that_says_where_k1_is_correct():
    msg = grpo.check(grpo.Config(kl_coef=0.1, kl_estimator="k1"))
    assert msg == ["algorithm.kl_estimator=k1 in the loss has zero expected gradient (E[grad log pi] = 0); k1 is "
                   "correct as a reward penalty: set algorithm.kl_in=reward, or use k3 or full in the loss"]
    assert grpo.check(grpo.Config(kl_coef=0.1, kl_estimator="k1", kl_in="reward")) == []
    assert grpo.check(grpo.Config(kl_coef=0.0, kl_estimator="k1")) == []  # no KL at all: nothing to refuse
    assert "belongs in the loss" in kl_errors("full", "reward", True)[0]
    assert score.check(score.Config(kl_estimator="k1"))[0].startswith("algorithm.kl_estimator=k1 in the loss")
    with pytest.raises(UserError, match="k1 is correct as a reward penalty"):
        bind_recipe({"data": {"train": "arith"}, "algorithm": {"name": "score", "kl_estimator": "k1"}})


def test_grpo_subtracts_the_k1_penalty_from_the_reward_before_the_advantage():
    cfg = grpo.Config(kl_coef=0.2, kl_in="reward", kl_estimator="k1", scale_rewards="none")
    traces = [make_trace(group="a", idx=i, reward=1.0) for i in range(2)]
    traces[0].meta["kl.k1"], traces[1].meta["kl.k1"] = [0.5], [0.0]
    kept = grpo.prepare(traces, cfg)
    assert [t.advantage for t in kept] == pytest.approx([-0.05, 0.05])  # 0.9 and 1.0 around their mean 0.95
    assert not grpo.zero_loss(kept[0], cfg) and grpo.zero_loss(make_trace(advantage=0.0), cfg)  # no KL term in the loss
    # filter_groups looks at the rewards alone: this group is all-equal there
    assert grpo.prepare(traces, grpo.Config(kl_coef=0.2, kl_in="reward", kl_estimator="k1", filter_groups=True)) == []


def test_score_stage1_anchors_turn1_through_the_reward_with_k1():
    cfg = score.Config(stage1_steps=1, kl_in="reward", kl_estimator="k1", beta2=0.1)
    traces = [make_trace(group="a", idx=0), make_trace(group="a", idx=1)]
    for tr, (r1, r2, k1) in zip(traces, [(0.0, 1.0, 2.0), (1.0, 1.0, 0.5)]):
        tr.turns += [make_trace().turns[0], make_trace().turns[1]]  # an instruction turn and attempt 2
        tr.first_attempt.reward, tr.second_attempt.reward = r1, r2
        tr.meta["kl.k1"] = [k1, 3.0]
    score.prepare(traces, cfg)
    assert [t.first_attempt.advantage for t in traces] == pytest.approx([-0.2, -0.05])  # -beta2 * k1 of turn 1
    assert [t.second_attempt.advantage for t in traces] == [1.0, 1.0]  # stage1_turn2_kl = 0: no penalty
    assert turn_kl_sums(make_trace(prompt_ids=(1, 2), completion_ids=(3, 4), logprobs=[-1.0, -2.0]),
                        [0.0, -1.5, -1.0]) == pytest.approx([0.5 - 1.0])


def test_the_constant_normaliser_gives_the_reference_gradient_under_any_number_of_processes():
    """The reference: each of W ranks divides its token sum by C, DDP averages. The loop: backward of
    aggregate * W on each process, DDP averages. Two simulated processes and one must both match."""
    w = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    tokens = [torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[0.0, 3.0, 1.0]])]
    mask = torch.ones(1, 3)

    def loop_grad(parts):
        grads = []
        for part in parts:
            w.grad = None
            (aggregate(part * w, mask, "constant", 0, 0, 0, 1000.0, len(parts)) * len(parts)).backward()
            grads.append(w.grad.clone())
        return sum(grads) / len(grads)

    def reference_grad(parts):
        return sum(p.sum(0) / 1000.0 for p in parts) / len(parts)

    assert loop_grad(tokens).tolist() == pytest.approx(reference_grad(tokens).tolist())
    assert loop_grad(tokens).tolist() == pytest.approx([0.5e-3, 2.5e-3, 0.5e-3])
    one = [torch.cat(tokens)]
    assert loop_grad(one).tolist() == pytest.approx(reference_grad(one).tolist())


def test_pi_old_from_the_trainer_without_a_weight():
    batch = {"mask": torch.tensor([[1.0, 1.0, 0.0]]), "old_logp": torch.tensor([[-1.0, -2.0, 0.0]])}
    trainer = torch.tensor([[-1.1, -1.9, 0.0]])
    weight, stats = mismatch_weights(batch, trainer, "none", 2.0)
    assert weight is None and torch.equal(batch["old_logp"], trainer)
    assert stats["mismatch/abs_log_ratio"] == pytest.approx(0.1)
    nft = get_algorithm("nft")
    cfg = nft.Config()
    assert (nft.old_logprobs(cfg, "hf"), nft.old_logprobs(cfg, "vllm"), nft.old_logprobs(cfg, "vllm-server")) == \
        ("sampler", "trainer", "trainer")
    assert nft.old_logprobs(nft.Config(old_logprobs="trainer"), "hf") == "trainer"
    for name in ("grpo", "score", "ssr"):  # methods without the option keep their mismatch correction
        bind_recipe({"data": {"train": "arith"}, "generation": {"mismatch_correction": "tis"},
                     "algorithm": {"name": name}})
    with pytest.raises(UserError, match="old_logprobs=sampler contradicts generation.mismatch_correction=tis"):
        bind_recipe({"data": {"train": "arith"}, "generation": {"mismatch_correction": "tis"},
                     "algorithm": {"name": "nft", "old_logprobs": "sampler"}})
