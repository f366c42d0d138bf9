"""The same recipe in two CPU processes under `accelerate launch` (gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file

from selfimprove.distributed import check_deepspeed_config, weights_digest
from selfimprove.errors import UserError
from selfimprove.policy import load_model

ROOT = Path(__file__).resolve().parents[1]

DDP = dict(algorithm={"name": "grpo"}, log={"name": "ddp"},
           train={"steps": 4, "prompts_per_step": 4, "micro_batch_size": 4, "threads": 1},
           eval={"after": True, "n": 20})


def launch_two(recipe):
    """`selfimprove train recipe` in two CPU processes (accelerate launch, gloo); (the result, its env)."""
    accelerate = str(Path(sys.executable).parent / "accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([accelerate, "launch", "--config_file", str(ROOT / "recipes/accelerate/cpu_2proc.yaml"),
                          "-m", "selfimprove", "train", str(recipe)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)
    return out, env


@pytest.mark.slow
def test_two_cpu_processes_train_in_step(tmp_path, write_recipe):
    recipe = write_recipe(**DDP)
    out, env = launch_two(recipe)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "ddp" / "summary.json").read_text())
    assert summary["processes"] == 2
    assert summary["ranks_weights_identical"] is True
    rows = [json.loads(x) for x in (tmp_path / "runs" / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["samples"] for r in rows] == [16, 16, 16, 16]  # 4 prompts x 4 samples over both processes
    assert summary["n_eval"] == 20

    # the same global batch in one process: the same samples (one random stream per prompt), so the
    # same loss curve up to the order of floating-point sums
    env1 = {**env, "SELFIMPROVE_FAULT": ""}
    one = subprocess.run([sys.executable, "-m", "selfimprove", "train", str(recipe), "log.name=single"],
                         capture_output=True, text=True, env=env1, cwd=ROOT, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    single = [json.loads(x) for x in (tmp_path / "runs" / "single" / "metrics.jsonl").read_text().splitlines()]
    assert [r["reward"] for r in single] == pytest.approx([r["reward"] for r in rows], abs=1e-9)
    assert [r["loss"] for r in single] == pytest.approx([r["loss"] for r in rows], abs=1e-4)
    assert [r["grad_norm"] for r in single] == pytest.approx([r["grad_norm"] for r in rows], rel=1e-3)
    assert any(abs(r["loss"]) > 1e-3 for r in rows)  # a curve worth comparing: the steps did learn


@pytest.mark.slow
def test_asynchronous_rollout_in_two_processes_matches_one_process(tmp_path, write_recipe):
    """generation.max_staleness=1 under DDP: the background threads do no collective (no hang), a checkpoint
    gathers both processes' batches in flight, and the run matches one process's (same samples)."""
    recipe = write_recipe(**{**DDP, "log": {"name": "ddp", "save_every": 2}},
                          generation={"n": 4, "max_new_tokens": 5, "max_staleness": 1})
    out, env = launch_two(recipe)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "ddp" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["ranks_weights_identical"] is True
    state = json.loads((tmp_path / "runs/ddp/checkpoints/step-000002/trainer_state.json").read_text())
    assert len(state["ahead"]["batches"]) == 2 and all(len(b["traces"]) == 8 for b in state["ahead"]["batches"])
    rows = [json.loads(x) for x in (tmp_path / "runs" / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["staleness"] for r in rows] == [0, 1, 1, 1]
    one = subprocess.run([sys.executable, "-m", "selfimprove", "train", str(recipe), "log.name=single"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    single = [json.loads(x) for x in (tmp_path / "runs" / "single" / "metrics.jsonl").read_text().splitlines()]
    assert [r["reward"] for r in single] == pytest.approx([r["reward"] for r in rows], abs=1e-9)
    assert [r["loss"] for r in single] == pytest.approx([r["loss"] for r in rows], abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("recipe, overrides, check", [
    ("recipes/selfj/tiny_arith.yaml",
     ["algorithm.n_train_questions=32", "algorithm.n_eval_questions=16", "train.epochs=1", "train.batch_size=16"],
     lambda s: s["n_train_answers"] == 128 and s["n_eval_answers"] == 64 and s["judge"]["n"] == 64 and s["steps"] == 8),
    ("recipes/reward_model/tiny_arith.yaml",
     ["algorithm.n_pairs=64", "train.epochs=1", "algorithm.n_eval=16", "train.batch_size=16", "train.micro_batch_size=8"],
     lambda s: s["train_pairs"] == 64 and s["steps"] == 4 and s["best_of_n"]["problems"] == 16),
])
def test_judge_and_reward_model_training_run_in_two_processes(tmp_path, mini_model, recipe, overrides, check):
    accelerate = str(Path(sys.executable).parent / "accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([accelerate, "launch", "--config_file", str(ROOT / "recipes/accelerate/cpu_2proc.yaml"),
                          "-m", "selfimprove", "train", str(ROOT / recipe), f"model.path={mini_model}",
                          f"log.out={tmp_path}", "log.name=run", *overrides],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert check(summary), summary


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["cpu_zero2", "cpu_zero3"])
def test_deepspeed_zero_trains_in_two_cpu_processes_like_one_process(tmp_path, write_recipe, profile):
    """ZeRO-2 / ZeRO-3 through the accelerate profiles on CPU (gloo): the same loss curve as one
    process (ZeRO-3: generation and the checksum see gathered weights, checkpoints hold whole ones)."""
    recipe = write_recipe(**DDP)
    accelerate = str(Path(sys.executable).parent / "accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = [accelerate, "launch", "--config_file", str(ROOT / f"recipes/accelerate/{profile}.yaml"),
              "-m", "selfimprove", "train", str(recipe)]
    out = subprocess.run([*launch, "log.name=zero", "log.save_every=2"], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "zero" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["ranks_weights_identical"] is True
    one = subprocess.run([sys.executable, "-m", "selfimprove", "train", str(recipe), "log.name=single"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "runs" / "zero" / "metrics.jsonl").read_text().splitlines()]
    single = [json.loads(x) for x in (tmp_path / "runs" / "single" / "metrics.jsonl").read_text().splitlines()]
    assert [r["optimizer_steps"] for r in rows] == [1, 1, 1, 1]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in single], abs=1e-4)
    assert [r["grad_norm"] for r in rows] == pytest.approx([r["grad_norm"] for r in single], rel=1e-3)

    ckpt = load_file(str(tmp_path / "runs" / "zero" / "checkpoints" / "step-000004" / "model" / "model.safetensors"))
    assert ckpt["model.embed_tokens.weight"].shape[0] > 300  # whole tensors, not a process's shard
    # the digest is taken over weight-push buckets (gathered one by one under ZeRO-3): they hold
    # exactly the final weights

    final = load_model(str(tmp_path / "runs" / "zero" / "checkpoints" / "step-000004"), "float32")
    assert summary["weights_sha256"] == weights_digest(final)
    # exact resume under ZeRO: every process reloads its own optimizer partition (DeepSpeed's
    # checkpoint inside ours); from step 2 the run ends bit-identical to the uninterrupted one
    step2 = tmp_path / "runs" / "zero" / "checkpoints" / "step-000002"
    assert sorted(p.name for p in (step2 / "deepspeed" / "state").glob("*optim_states.pt"))[:2] and \
        len(list((step2 / "deepspeed" / "state").glob("*optim_states.pt"))) == 2  # one partition per process
    again = subprocess.run([*launch, "log.name=resumed", f"train.resume={step2}", "eval.after=false"],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((tmp_path / "runs" / "resumed" / "summary.json").read_text())
    tail = [json.loads(x) for x in (tmp_path / "runs" / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["reward"]) for r in tail] == [(r["step"], r["reward"]) for r in rows[2:]]
    if profile == "cpu_zero2":  # bit-identical
        assert resumed["weights_sha256"] == summary["weights_sha256"]
        assert [r["loss"] for r in tail] == [r["loss"] for r in rows[2:]]
    else:  # ZeRO-3: the same samples and curve to float rounding (measured: losses 1e-8 apart), not bit-exact
        assert [r["loss"] for r in tail] == pytest.approx([r["loss"] for r in rows[2:]], abs=1e-6)
        assert [r["grad_norm"] for r in tail] == pytest.approx([r["grad_norm"] for r in rows[2:]], rel=1e-5)


def _launch(tmp_path, write_recipe, *flags):
    accelerate = str(Path(sys.executable).parent / "accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([accelerate, "launch", "--num_processes", "1", "--main_process_port", "29533", *flags,
                           "-m", "selfimprove", "train", str(write_recipe(**DDP))],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def _refused(out, line: str, tmp_path) -> None:
    """The process stopped with exit code 2 and one line, no traceback of ours (the launcher reports the exit
    code of its child with its own), and no run folder."""
    assert line in out.stderr and "exitcode: 2" in out.stderr, out.stderr[-3000:]
    assert f'File "{ROOT / "selfimprove"}' not in out.stderr and not (tmp_path / "runs" / "ddp").exists()


@pytest.mark.parametrize("block", ["optimizer", "scheduler"])
def test_a_deepspeed_config_with_its_own_optimizer_or_scheduler_block_is_refused(block):
    config = {"zero_optimization": {"stage": 2}, block: {"type": "AdamW", "params": {"lr": "auto"}}}
    acc = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=config)))
    keys = {"optimizer": "train.lr, weight_decay, adam_beta1, adam_beta2", "scheduler": "train.lr_schedule, warmup_steps"}
    with pytest.raises(UserError, match=f"^the DeepSpeed config has a '{block}' block: selfimprove builds the {block} "
                                        f"from {keys[block]}; remove the block from the DeepSpeed config$"):
        check_deepspeed_config(acc)
    del config[block]
    check_deepspeed_config(acc)  # without the block: accepted


@pytest.mark.slow
def test_a_deepspeed_launch_with_an_optimizer_block_stops_in_one_line(tmp_path, write_recipe):
    pytest.importorskip("deepspeed")
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto",
                              "optimizer": {"type": "AdamW", "params": {"lr": "auto"}}}))
    out = _launch(tmp_path, write_recipe, "--use_deepspeed", "--deepspeed_config_file", str(ds))
    _refused(out, f"error: {ds} has a 'optimizer' block: selfimprove builds the optimizer from train.", tmp_path)


def test_an_fsdp_launch_is_refused_not_run_unsharded(tmp_path, write_recipe):
    out = _launch(tmp_path, write_recipe, "--use_fsdp")
    _refused(out, "error: FSDP is not supported yet; use DeepSpeed ZeRO-2/3", tmp_path)
