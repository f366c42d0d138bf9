import pytest
import torch

from selfimprove.algorithms import score
from selfimprove.algorithms.common import aggregate
from selfimprove.batch import collate
from selfimprove.trace import Trace, Turn


def test_shaped_reward_table_alpha_10():
    table = {(r1, r2): score.shaped_reward(r1, r2, 10.0) for r1 in (0, 1) for r2 in (0, 1)}
    assert table == {(0, 0): 0, (0, 1): 11, (1, 0): -10, (1, 1): 1}


def episode(gid, r1, r2, version):
    t = Trace(id=f"{gid}-{r1}{r2}", group_id=gid, task="t", prompt=[], policy_version=version, turns=[
        Turn("user", "q", [1, 2, 3]),
        Turn("assistant", "a1", [4, 5], [-0.5, -0.6], trainable=True, reward=r1),
        Turn("user", "instr", [6, 7]),
        Turn("assistant", "a2", [8, 9, 10], [-0.7, -0.8, -0.9], trainable=True, reward=r2)], reward=r2)
    return t


def grads(stage1_steps, version, r1=1.0, r2=0.0, **kw):
    """dL/dlogp per target column, with the reference equal to the policy."""
    cfg = score.Config(stage1_steps=stage1_steps, **kw)
    traces = score.prepare([episode("g", r1, r2, version)], cfg)
    b = collate(traces, pad_id=0, meta_keys=score.META_KEYS)
    logp = b["old_logp"].clone().requires_grad_(True)
    tok = score.token_loss(logp, b["old_logp"], b["tok_adv"], b["turn_id"], b["score.kl1"], b["score.kl2"], cfg,
                           ref_logp=b["old_logp"])
    aggregate(tok, b["mask"], "constant", 0, 0, 0, 1.0).backward()
    return logp.grad[0].tolist(), b, traces[0]


def test_columns_of_the_two_turns_and_the_instruction():
    _, b, _ = grads(1, 0)
    # tokens: q q q a1 a1 i i a2 a2 a2 -> targets at columns 2,3 (turn 1) and 6,7,8 (turn 2)
    assert b["turn_id"][0].tolist() == [0, 0, 1, 1, 0, 0, 2, 2, 2]
    assert b["mask"][0].tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 1]


def test_stage1_no_policy_gradient_on_turn1_and_none_on_the_instruction():
    g, _, tr = grads(stage1_steps=5, version=0, r1=1.0, r2=1.0)
    assert tr.meta["score.stage"] == 1 and tr.first_attempt.advantage == 0.0
    assert g[2] == 0.0 and g[3] == 0.0  # turn 1: KL only, and KL's gradient is 0 where pi = ref
    assert g[4] == 0.0 and g[5] == 0.0  # instruction tokens
    assert g[6:] == pytest.approx([-1.0, -1.0, -1.0])  # turn 2: -r2


def test_stage2_credits_each_turn_with_its_own_reward_and_shapes_turn2():
    g, _, tr = grads(stage1_steps=0, version=3, r1=0.0, r2=1.0)
    assert tr.meta["score.stage"] == 2 and tr.meta["score.shaped_r2"] == 11.0
    assert g[2:4] == [0.0, 0.0]  # r1 = 0
    assert g[4:6] == [0.0, 0.0]
    assert g[6:] == pytest.approx([-11.0] * 3)
    g, _, _ = grads(stage1_steps=0, version=3, r1=1.0, r2=0.0)
    assert g[2:4] == pytest.approx([-1.0, -1.0]) and g[6:] == pytest.approx([10.0] * 3)


@pytest.mark.parametrize("r1, r2, credit, turn1, turn2", [
    # turn1_credit reward (the paper's instantaneous reward): turn 1 gets r1, whatever happens after it
    (0.0, 1.0, "reward", 0.0, 11.0), (1.0, 0.0, "reward", 1.0, -10.0), (1.0, 1.0, "reward", 1.0, 1.0),
    (0.0, 0.0, "reward", 0.0, 0.0),
    # turn1_credit return: r1 + r2~; a wrong first attempt that is fixed earns 0 + 11, a right one broken 1 - 10
    (0.0, 1.0, "return", 11.0, 11.0), (1.0, 0.0, "return", -9.0, -10.0), (1.0, 1.0, "return", 2.0, 1.0),
    (0.0, 0.0, "return", 0.0, 0.0),
])
def test_stage2_turn1_credit_worked_numbers(r1, r2, credit, turn1, turn2):
    g, _, tr = grads(stage1_steps=0, version=3, r1=r1, r2=r2, turn1_credit=credit)
    assert (tr.first_attempt.advantage, tr.second_attempt.advantage) == (turn1, turn2)
    assert g[2:4] == pytest.approx([-turn1] * 2) and g[6:] == pytest.approx([-turn2] * 3)  # REINFORCE: -A per token


def test_turn1_credit_does_not_touch_stage1_and_the_default_is_the_papers():
    assert score.Config().turn1_credit == "reward"
    _, _, tr = grads(stage1_steps=5, version=0, r1=0.0, r2=1.0, turn1_credit="return")
    assert (tr.first_attempt.advantage, tr.second_attempt.advantage) == (0.0, 1.0)  # Stage I: r2 alone, unshaped


def test_return_credit_with_a_group_baseline():
    cfg = score.Config(stage1_steps=0, baseline="group", turn1_credit="return")
    traces = score.prepare([episode("g", 0.0, 1.0, 1), episode("g", 1.0, 1.0, 1), episode("g", 1.0, 0.0, 1)], cfg)
    # returns 11, 2, -9 (mean 4/3); shaped r2 11, 1, -10 (mean 2/3)
    assert [t.first_attempt.advantage for t in traces] == pytest.approx([29 / 3, 2 / 3, -31 / 3])
    assert [t.second_attempt.advantage for t in traces] == pytest.approx([31 / 3, 1 / 3, -32 / 3])


def test_stage1_kl_pins_turn1_only():
    cfg = score.Config(stage1_steps=5, beta2=0.1, beta1=0.01)
    traces = score.prepare([episode("g", 1.0, 0.0, 0)], cfg)
    b = collate(traces, pad_id=0, meta_keys=score.META_KEYS)
    logp = (b["old_logp"] + 0.3).requires_grad_(True)  # the policy drifted from the reference
    tok = score.token_loss(logp, logp.detach(), torch.zeros_like(logp), b["turn_id"], b["score.kl1"],
                           b["score.kl2"], cfg, ref_logp=b["old_logp"])
    (tok * b["mask"]).sum().backward()
    k3_grad = 0.1 * (1 - torch.exp(torch.tensor(-0.3))).item()
    assert logp.grad[0, 2:4].tolist() == pytest.approx([k3_grad] * 2)
    assert logp.grad[0, 6:].tolist() == [0.0, 0.0, 0.0]  # stage1_turn2_kl = 0


def test_group_baseline():
    cfg = score.Config(stage1_steps=0, baseline="group")
    traces = score.prepare([episode("g", 0.0, 1.0, 1), episode("g", 0.0, 0.0, 1)], cfg)
    assert [t.second_attempt.advantage for t in traces] == pytest.approx([5.5, -5.5])


def test_step_metrics_worked_numbers():
    """Eight episodes (r1, r2): 3 right->right, 1 right->wrong, 2 wrong->right, 2 wrong->wrong."""
    pairs = [(1, 1)] * 3 + [(1, 0)] + [(0, 1)] * 2 + [(0, 0)] * 2
    traces = [episode(f"g{i}", float(a), float(b), 7) for i, (a, b) in enumerate(pairs)]
    sums = score.step_metrics(traces, score.Config(stage1_steps=5))
    means = {k: v / len(traces) for k, v in sums.items()}
    assert means == pytest.approx({"selfcorrect/r1": 0.5, "selfcorrect/r2": 0.625, "selfcorrect/acc_t1": 0.5,
                                   "selfcorrect/acc_t2": 0.625, "selfcorrect/delta": 0.125,
                                   "selfcorrect/delta_i2c": 0.25, "selfcorrect/delta_c2i": 0.125,
                                   "score/stage": 2.0})
    assert means["selfcorrect/delta"] == means["selfcorrect/delta_i2c"] - means["selfcorrect/delta_c2i"]
    assert score.step_metrics(traces, score.Config(stage1_steps=8))["score/stage"] == 8  # all in Stage I
    assert set(score.step_metrics([], score.Config(stage1_steps=8))) == set(sums)  # same keys on every process


def test_a_config_without_stage1_steps_is_refused_by_prepare():
    with pytest.raises(ValueError, match="stage1_steps is unset"):
        score.prepare([episode("g", 0.0, 1.0, 0)], score.Config())
