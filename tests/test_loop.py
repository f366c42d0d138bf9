import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from selfimprove import loop
from selfimprove.algorithms import Algorithm
from selfimprove.batch import collate, token_logprobs
from selfimprove.cli import main
from selfimprove.config import RewardSpec
from selfimprove.errors import UserError
from selfimprove.logprobs import reference_logprobs
from selfimprove.loop import run
from selfimprove.policy import load_model
from selfimprove.recipe import load_recipe
from selfimprove.trace import Trace, Turn


def test_collate_masks_only_trainable_turns_aligned_to_targets():
    t = Trace(id="a", group_id="g", task="t", prompt=[], turns=[
        Turn("user", "", [1, 2, 3]), Turn("assistant", "", [4, 5], [-0.4, -0.5], trainable=True),
        Turn("user", "", [6]), Turn("assistant", "", [7, 8], [-0.7, -0.8], trainable=True)], advantage=0.5)
    short = Trace(id="b", group_id="g", task="t", prompt=[], turns=[
        Turn("user", "", [1]), Turn("assistant", "", [9], [-0.9], trainable=True)])
    b = collate([t, short], pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8], [1, 9, 0, 0, 0, 0, 0, 0]]
    assert b["attention_mask"].tolist() == [[1] * 8, [1, 1, 0, 0, 0, 0, 0, 0]]
    assert b["mask"].tolist() == [[0, 0, 1, 1, 0, 1, 1], [1, 0, 0, 0, 0, 0, 0]]
    assert b["targets"][0].tolist() == [2, 3, 4, 5, 6, 7, 8]
    assert torch.allclose(b["old_logp"][0], torch.tensor([0, 0, -0.4, -0.5, 0, -0.7, -0.8]))
    assert b["advantage"].tolist() == [0.5, 0.0]


LOOP = dict(train={"micro_batch_size": 6, "mini_batches": 2}, eval={"before": True, "after": True},
            log={"traces_every": 1})


@pytest.mark.parametrize("algo", ["nft", "grpo", "rft", "score"])
def test_end_to_end_run_updates_weights_and_writes_the_run_folder(tmp_path, mini_model, write_recipe, algo):
    p = write_recipe(algorithm={"name": algo}, **LOOP)
    overrides = {"nft": ["algorithm.filter_groups=false"], "rft": ["algorithm.filter_groups=false"],
                 "score": ["algorithm.stage1_steps=1", "algorithm.instruction=reask"]}.get(algo, [])
    recipe = load_recipe(p, overrides)
    summary = run(recipe, log=lambda *a: None)
    d = tmp_path / "runs" / "run"
    assert summary["run_dir"] == str(d)
    for name in ("config.yaml", "metrics.jsonl", "traces.jsonl", "summary.json", "reward.png", "accuracy.png"):
        assert (d / name).is_file(), name
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("reward", "rewards/number_format", "rewards/math_correct", "loss", "grad_norm", "time/generate",
                "time/reward", "time/logprob", "time/update", "tokens_per_s", "frac_all_equal"):
        assert key in rows[0], key
    assert rows[0]["samples"] == 16
    if algo == "score":  # two attempts, the reference KL logged per turn, Stage I then Stage II
        assert "kl_turn1" in rows[0] and "kl_turn2" in rows[0]
        last = [json.loads(x) for x in (d / "traces.jsonl").read_text().splitlines()][-1]
        assert [t["role"] for t in last["turns"]] == ["user", "assistant", "user", "assistant"]
        assert last["meta"]["score.stage"] == 2
        # per-step self-correction metrics: means over the step's 16 episodes, consistent with each other
        assert [r["score/stage"] for r in rows] == [1.0, 2.0, 2.0]
        for r in rows:
            sc = {k.split("/")[1]: v for k, v in r.items() if k.startswith("selfcorrect/")}
            assert set(sc) == {"r1", "r2", "acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i"}
            assert all(v * 16 == pytest.approx(round(v * 16)) for k, v in sc.items() if k not in ("r1", "r2"))
            assert sc["delta"] == pytest.approx(sc["acc_t2"] - sc["acc_t1"])
            assert sc["delta"] == pytest.approx(sc["delta_i2c"] - sc["delta_c2i"])
        assert (d / "self_correction.png").is_file()
    else:
        assert not (d / "self_correction.png").exists() and not any(k.startswith("selfcorrect/") for k in rows[0])
    s = json.loads((d / "summary.json").read_text())
    assert {"accuracy_before", "accuracy_after", "n_eval", "train_seconds"} <= set(s) and s["n_eval"] == 16
    ckpt = d / "checkpoints" / "step-000003"
    before, after = load_model(mini_model), load_model(str(ckpt))
    changed = [n for (n, a), (_, b) in zip(before.named_parameters(), after.named_parameters()) if not torch.equal(a, b)]
    assert len(changed) == len(list(before.parameters()))  # every parameter moved
    assert (ckpt / "trainer_state.pt").is_file() and (ckpt / "model" / "tokenizer.json").is_file()
    # the trainer state lies beside the Hugging Face folder, never in it
    assert not {"trainer_state.pt", "trainer_state.json"} & {p.name for p in (ckpt / "model").iterdir()}


def constant_reward(traces, ctx):
    return [1.0] * len(traces)


def test_no_optimizer_step_when_nothing_carries_a_gradient(tmp_path, mini_model, write_recipe):
    # every group has equal rewards: GRPO advantages are exactly 0, so the weights must not move at all
    # (Adam's momentum and weight decay would still move them on an empty step)
    p = write_recipe(algorithm={"name": "grpo"}, **LOOP)
    recipe = load_recipe(p, ["eval.before=false", "eval.after=false", "train.weight_decay=0.1"])
    recipe.rewards = [RewardSpec(fn="tests.test_loop:constant_reward")]
    summary = run(recipe, log=lambda *a: None)
    rows = [json.loads(x) for x in (tmp_path / "runs" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["optimizer_steps"] for r in rows] == [0, 0, 0] and [r["frac_all_equal"] for r in rows] == [1.0] * 3
    before, after = load_model(mini_model), load_model(summary["run_dir"] + "/checkpoints/step-000003")
    assert all(torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))


def test_bf16_is_mixed_precision_with_fp32_master_weights(tmp_path, mini_model, write_recipe):
    p = write_recipe(algorithm={"name": "grpo"}, **LOOP)
    recipe = load_recipe(p, ["model.dtype=bfloat16", "eval.before=false", "eval.after=false", "train.steps=1"])
    state = loop.setup(recipe, log=lambda *a: None)
    assert next(state.model.parameters()).dtype == torch.float32  # the optimizer steps fp32 master weights
    summary = run(recipe, log=lambda *a: None)
    ckpt = Path(summary["run_dir"]) / "checkpoints" / "step-000001"
    # the Hugging Face folder holds bf16 (the model's own dtype); the fp32 masters lie beside it, for resume
    assert safetensors_dtypes(ckpt / "model" / "model.safetensors") == {"BF16"}
    assert json.loads((ckpt / "model" / "config.json").read_text())["dtype"] == "bfloat16"
    assert safetensors_dtypes(ckpt / "master_weights.safetensors") == {"F32"}
    master = load_file(str(ckpt / "master_weights.safetensors"))
    hf = load_file(str(ckpt / "model" / "model.safetensors"))
    assert master.keys() == hf.keys() and all(torch.equal(master[k].bfloat16(), hf[k]) for k in hf)


def safetensors_dtypes(path) -> set[str]:
    with safe_open(str(path), "pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}


def test_lora_trains_only_adapters_and_uses_the_adapters_off_model_as_reference(tmp_path, mini_model, write_recipe):
    p = write_recipe(algorithm={"name": "score"}, **LOOP)
    recipe = load_recipe(p, ["model.lora_r=4", "algorithm.stage1_steps=1", "algorithm.instruction=reask",
                             "eval.before=false", "eval.after=false", "train.steps=2"])
    state = loop.setup(recipe, log=lambda *a: None)
    trainable = [n for n, q in state.model.named_parameters() if q.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert state.ref_model is state.accelerator.unwrap_model(state.model)  # no second copy
    row, traces = loop.train_step(state, 0)
    ref = reference_logprobs(state.accelerator, state.model, state.ref_model, traces[:2], 8,
                             state.tokenizer.pad_token_id, lora=True)
    with torch.no_grad():
        base = load_model(mini_model)
        b = collate(traces[:2], state.tokenizer.pad_token_id)
        expect = token_logprobs(base, b)
    real = b["attention_mask"][:, 1:].bool()  # padding columns hold no defined value (train.shared_prefix: zeros)
    assert torch.allclose(torch.tensor(ref)[real], expect[real], atol=1e-5)  # the reference = the base model
    assert "kl_turn1" in row


def test_an_algorithm_from_outside_the_registry_runs_through_the_record(tmp_path, mini_model, write_recipe):
    """The README's example algorithm, named by its module path: the loop reads its Algorithm record."""
    p = write_recipe(algorithm={"name": "tests.algorithms.user_algo"}, **LOOP)
    recipe = load_recipe(p, ["eval.before=false", "eval.after=false", "train.steps=2", "train.mini_batches=1",
                             "algorithm.loss_agg=seq-mean"])
    assert recipe.algorithm.name == "tests.algorithms.user_algo" and recipe.algorithm.loss_agg == "seq-mean"
    summary = run(recipe, log=lambda *a: None)
    rows = [json.loads(x) for x in open(summary["run_dir"] + "/metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and all(r["optimizer_steps"] == 1 for r in rows)
    with pytest.raises(UserError, match="does not export ALGORITHM = Algorithm"):
        load_recipe(p, ["algorithm.name=tests.test_loop"])


def test_an_algorithm_config_must_carry_the_aggregation_fields():
    @dataclass
    class Bare:
        name: str = "bare"

    with pytest.raises(UserError, match=r"its Config lacks \['loss_agg', 'loss_constant'\]"):
        Algorithm(name="bare", Config=Bare, prepare=lambda t, c: t, loss=lambda b, lp, c: (lp, {}))


def test_without_a_terminal_progress_is_a_plain_line_every_log_every_steps(write_recipe, capsys):
    """nohup / SLURM: stdout is not a terminal (as under pytest), so no bar: one line per log.every steps."""
    recipe = write_recipe(train={"steps": 4, "prompts_per_step": 4, "micro_batch_size": 8},
                          log={"every": 2, "progress": True})
    assert main(["train", str(recipe)]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("step ")]
    assert [x.split()[1] for x in lines] == ["2/4", "4/4"]
    assert all(re.fullmatch(r"step \d/4  reward -?[\d.]+  loss \S+  [\d.]+ s/step  ETA \d+:\d\d:\d\d", x) for x in lines)


def test_metrics_hold_reward_spread_truncation_and_length_range(write_recipe, tmp_path):
    recipe = write_recipe(train={"steps": 1, "prompts_per_step": 4, "micro_batch_size": 8},
                          generation={"n": 4, "max_new_tokens": 2}, log={"traces_every": 1, "traces_per_step": 64})
    assert main(["train", str(recipe)]) == 0
    row = json.loads((tmp_path / "runs/run/metrics.jsonl").read_text().splitlines()[0])
    traces = [json.loads(x) for x in (tmp_path / "runs/run/traces.jsonl").read_text().splitlines()]
    rewards = torch.tensor([t["reward"] for t in traces], dtype=torch.float64)
    lengths = [len(t["turns"][-1]["token_ids"]) for t in traces]
    assert len(traces) == 16 and row["reward_std"] == pytest.approx(rewards.std(unbiased=False).item())
    assert (row["completion_len/min"], row["completion_len/max"]) == (min(lengths), max(lengths))
    assert row["truncated_share"] == sum(t["turns"][-1]["finish_reason"] == "length" for t in traces) / 16
    assert row["rewards/math_correct/std"] is not None
