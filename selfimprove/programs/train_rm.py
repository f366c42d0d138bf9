"""Scalar reward-model training (Bradley-Terry) with TRL's RewardTrainer.

Loss per pair (InstructGPT, Ouyang et al., arXiv 2203.02155, eq. 1; margin as in Llama 2,
arXiv 2307.09288, eq. 2; centering as in Eisenstein et al., arXiv 2312.09244, eq. 2):

    -log sigmoid(r(x, y_chosen) - r(x, y_rejected) - m)  +  c * mean(r^2)

The RM is the recipe's model with a fresh one-output head (AutoModelForSequenceClassification),
trained in full or through LoRA (`model.lora_r > 0`, merged before saving). Where the pairs come
from (`algorithm.pairs_from`):

    pairs   rows with prompt, chosen, rejected (and `margin` when algorithm.margin is data)
    scores  rows with prompt, completion, score: within one prompt every two completions with
            different scores form a pair, the higher score chosen (m = the score gap); equal scores
            are skipped, as they state no preference
    self    the policy samples generation.n answers per prompt of data.train (a task with reference
            answers, e.g. arith); the verifier algorithm.verifier marks them; a correct and an incorrect
            answer to the same prompt form a pair: preference data without human labels
    auto    self for a synthetic task, else scores when the first row has `score`, else pairs

Training runs `train.epochs` passes (or `train.max_steps` optimizer steps) with `train.batch_size`
pairs per optimizer step over all processes, `train.micro_batch_size` per forward.

Evaluation on held-out prompts (data.eval, arith's fixed held-out split, or an eval_share of the
prompts): pairwise accuracy, score(chosen) > score(rejected), before and after training; for self
also best-of-N: the RM picks one of N samples per held-out problem; its accuracy is compared with
the first sample's (a random pick), the mean sample, greedy decoding and the oracle (pass@N).
Prompts and answers are tokenized once here with `reward.reward_model.encode`, the same rendering
the `reward_model` reward uses, and handed to TRL already tokenized.

    selfimprove train recipes/reward_model/tiny_arith.yaml
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m selfimprove train \
        recipes/reward_model/qwen2.5-1.5b_pairs.yaml
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass

import datasets
import torch

from reward import RewardContext, build_rewards, score
from reward.reward_model import encode, score_ids
from selfimprove.algorithms.common import choice_errors
from selfimprove.config import RewardSpec
from selfimprove.data import get_task, load_examples, read_rows, require_answers, set_chat_template
from selfimprove.distributed import make_accelerator
from selfimprove.engines import Sampling, make_engine
from selfimprove.errors import UserError
from selfimprove.evaluation.metrics import best_of_n_stats
from selfimprove.evaluation.report import summary_table
from selfimprove.options import opt
from selfimprove.policy import hub_options, load_model, load_tokenizer, model_options, resolve_model_path
from selfimprove.programs import FitConfig, Program, ProgramRecipe, SamplingConfig, check_program_recipe
from selfimprove.rollout import CORRECT_THRESHOLD, is_correct, sample
from selfimprove.runlog import RunLog
from selfimprove.trace import groups


@dataclass
class Config:
    name: str = opt("reward_model", "the program")
    pairs_from: str = opt("auto", "auto | pairs | scores | self (see the module docstring)")
    margin: str = opt("none", "none | data: the pairs' `margin` column, or the score gap of scored rows")
    margin_scale: float = opt(1.0, "m = margin_scale * margin")
    center_rewards_coefficient: float = opt(0.0, "> 0: + c * mean(r^2) keeps scores near zero (TRL suggests 0.01)")
    max_length: int = opt(1024, "pairs with a longer chosen or rejected sequence are dropped (and counted)")
    n_pairs: int = opt(2000, "self: pairs to collect")
    pairs_per_prompt: int = opt(0, "scores and self: at most this many pairs from one prompt (0: all of them)")
    eval_share: float = opt(0.1, "share of prompts held out when there is no held-out set (0: no evaluation)")
    eval_batch_size: int = opt(64, "sequences per scoring forward pass")
    verifier: str = opt("math_correct", "self: the reward that marks the policy's samples correct")
    verifier_kwargs: dict = opt({}, "options bound to the verifier (as rewards[].kwargs)")
    correct_threshold: float = opt(CORRECT_THRESHOLD, "self: a verifier value >= this is correct")
    n_eval: int = opt(500, "self: held-out problems for pairwise accuracy and best-of-N")


@dataclass
class RewardModelRecipe(ProgramRecipe):
    """The recipe of the `reward_model` program."""

    generation: SamplingConfig = opt(SamplingConfig(n=8), "self: how the policy samples (n answers per prompt)")
    algorithm: Config = opt(Config(), "the reward model's options")
    train: FitConfig = opt(FitConfig(), "reward-model training (TRL's RewardTrainer)")


def check(recipe: RewardModelRecipe) -> list[str]:
    check_program_recipe(recipe)
    cfg = recipe.algorithm
    errs = choice_errors(cfg, {"pairs_from": ("auto", "pairs", "scores", "self"), "margin": ("none", "data")})
    if cfg.max_length < 8 or cfg.n_pairs < 1 or cfg.eval_batch_size < 1 or cfg.n_eval < 1:
        errs.append("algorithm.max_length must be >= 8, n_pairs, eval_batch_size and n_eval >= 1")
    if not 0 <= cfg.eval_share < 1 or cfg.pairs_per_prompt < 0 or cfg.center_rewards_coefficient < 0:
        errs.append("algorithm.eval_share must be in [0, 1), pairs_per_prompt and center_rewards_coefficient >= 0")
    return errs


@dataclass
class Pair:
    prompt: list[dict]  # chat messages
    chosen: str
    rejected: str
    margin: float = 0.0


# --------------------------------------------------------------------------- pairs from files


def _field(row: dict, name: str, source: str, i: int):
    if name not in row or row[name] is None:
        raise UserError(f"data: {source} row {i} has no field '{name}' (fields: {', '.join(map(str, row))})")
    return row[name]


def _messages(value, source: str, i: int, system_prompt: str | None) -> list[dict]:
    if isinstance(value, str):
        msgs = [{"role": "user", "content": value}]
    elif isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        msgs = [{"role": m.get("role", "user"), "content": m["content"]} for m in value]
    else:
        raise UserError(f"data: {source} row {i}: 'prompt' must be text or a list of chat messages")
    if system_prompt and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": system_prompt}] + msgs
    return msgs


def _answer(value, source: str, i: int, name: str) -> str:
    """Plain text, or TRL's conversational form: a list holding one assistant message."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) and "content" in value[0]:
        value = value[0]["content"]
    if not isinstance(value, str):
        raise UserError(f"data: {source} row {i}: '{name}' must be text or one assistant message")
    return value


def _number(value, source: str, i: int, name: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(value, bool) or not math.isfinite(x):
        raise UserError(f"data: {source} row {i}: '{name}' must be a finite number, got {value!r}")
    return x


def pairs_from_rows(rows: list[dict], source: str, data_cfg, margin: bool = False) -> list[Pair]:
    """Rows with prompt, chosen, rejected (and margin); row numbers in errors count from 1."""
    out = []
    for i, row in enumerate(rows, 1):
        prompt = _messages(_field(row, "prompt", source, i), source, i, data_cfg.system_prompt)
        chosen = _answer(_field(row, "chosen", source, i), source, i, "chosen")
        rejected = _answer(_field(row, "rejected", source, i), source, i, "rejected")
        m = _number(_field(row, "margin", source, i), source, i, "margin") if margin else 0.0
        out.append(Pair(prompt, chosen, rejected, m))
    return out


def pairs_from_scores(rows: list[dict], source: str, data_cfg, per_prompt: int = 0) -> list[Pair]:
    """Rows with prompt, completion, score -> pairs within each prompt, higher score chosen.

    Completions i < j (in file order) of one prompt give the pair (higher, lower) with margin equal to
    the score gap; equal scores are skipped (no preference). `per_prompt` > 0 keeps the first pairs.
    """
    by_prompt: dict[str, list[tuple[list[dict], str, float]]] = {}
    for i, row in enumerate(rows, 1):
        prompt = _messages(_field(row, "prompt", source, i), source, i, data_cfg.system_prompt)
        completion = _answer(_field(row, "completion", source, i), source, i, "completion")
        score = _number(_field(row, "score", source, i), source, i, "score")
        by_prompt.setdefault(json.dumps(prompt), []).append((prompt, completion, score))
    out = []
    for items in by_prompt.values():
        found = []
        for a in range(len(items)):
            for b in range(a + 1, len(items)):
                (prompt, ca, sa), (_, cb, sb) = items[a], items[b]
                if sa != sb:
                    hi, lo = ((ca, sa), (cb, sb)) if sa > sb else ((cb, sb), (ca, sa))
                    found.append(Pair(prompt, hi[0], lo[0], hi[1] - lo[1]))
        out.extend(found[:per_prompt] if per_prompt else found)
    return out


def file_pairs(source: str, split: str, cfg: Config, data_cfg) -> list[Pair]:
    rows = read_rows(source, split)
    if not rows:
        raise UserError(f"data: {source} is empty")
    mode = cfg.pairs_from
    if mode == "auto":
        mode = "scores" if "score" in rows[0] else "pairs"
    if mode == "scores":
        pairs = pairs_from_scores(rows, source, data_cfg, cfg.pairs_per_prompt)
    else:
        pairs = pairs_from_rows(rows, source, data_cfg, margin=cfg.margin == "data")
    if not pairs:
        raise UserError(f"data: {source} gives no preference pairs (every prompt's scores are equal)")
    return pairs


def split_by_prompt(items: list, key, share: float, seed: int) -> tuple[list, list]:
    """(train, held-out): whole prompts go to one side, so no held-out prompt is trained on."""
    keys = sorted({key(x) for x in items})
    random.Random(seed).shuffle(keys)
    held = set(keys[: round(len(keys) * share)]) if share > 0 and len(keys) > 1 else set()
    return [x for x in items if key(x) not in held], [x for x in items if key(x) in held]


# --------------------------------------------------------------------------- pairs from the policy


def self_pairs(traces, correct: dict[str, bool], per_prompt: int = 0) -> list[Pair]:
    """A correct and an incorrect answer to the same prompt (distinct texts), per group of samples."""
    out = []
    for group in groups(traces).values():
        right = list(dict.fromkeys(tr.completion.text for tr in group if correct[tr.id]))
        wrong = list(dict.fromkeys(tr.completion.text for tr in group if not correct[tr.id]))
        found = [Pair(group[0].prompt, c, w, 1.0) for c in right for w in wrong]
        # interleave so that a cap keeps varied wrong answers rather than one right answer's pairs only
        found.sort(key=lambda p: wrong.index(p.rejected))
        out.extend(found[:per_prompt] if per_prompt else found)
    return out


def sample_and_verify(engine, tokenizer, examples, sampling, verifier, recipe, tag: str):
    """Sample, score with the verifier; returns (traces, {trace id: correct})."""
    traces = sample(engine, tokenizer, examples, sampling, tag=tag, max_prompt_tokens=recipe.data.max_prompt_tokens)
    score(traces, [verifier], RewardContext(tokenizer, engine))
    cfg = recipe.algorithm
    return traces, {tr.id: is_correct(tr, verifier.name, cfg.correct_threshold) for tr in traces}


def collect_self_data(recipe, path: str, tokenizer, log):
    """Train pairs from the policy's own samples, and held-out samples (N per problem) for evaluation."""
    cfg, d, g = recipe.algorithm, recipe.data, recipe.generation
    (verifier,) = build_rewards([RewardSpec(fn=cfg.verifier, kwargs=cfg.verifier_kwargs)])
    if g.n < 2:
        raise UserError("generation.n must be >= 2 for self-generated pairs (a correct and an incorrect sample)")
    # a synthetic task's stream is endless: at most 8 prompts per wanted pair (the yield is logged)
    examples = load_examples(d.train, d, d.train_split, n_train=8 * cfg.n_pairs, seed=recipe.seed)
    require_answers(examples, d.train, d.answer_column)
    heldout = load_examples(d.eval or d.train, d, d.eval_split) if d.eval or get_task(d.train) else None
    if heldout is None:
        examples, heldout = split_by_prompt(examples, lambda ex: json.dumps(ex.prompt), cfg.eval_share, recipe.seed)
    heldout = heldout[: cfg.n_eval]
    engine = make_engine("hf", load_model(path, "float32", recipe.model), tokenizer, seed=recipe.seed)
    sampling = Sampling.of(g)
    pairs, used, chunk = [], 0, max(1, g.batch_size // g.n)
    while len(pairs) < cfg.n_pairs and used < len(examples):
        traces, correct = sample_and_verify(engine, tokenizer, examples[used : used + chunk], sampling, verifier,
                                            recipe, tag=f"train{used}")
        pairs.extend(self_pairs(traces, correct, cfg.pairs_per_prompt))
        used += chunk
    log(f"self-generated pairs: {min(len(pairs), cfg.n_pairs)} from {used} prompts x {g.n} samples")
    if not pairs:
        raise UserError("no prompt had both a correct and an incorrect sample: no preference pairs")
    held_traces, held_correct = sample_and_verify(engine, tokenizer, heldout, sampling, verifier, recipe, "heldout")
    greedy = Sampling.of(g, n=1, temperature=0.0)
    _, greedy_correct = sample_and_verify(engine, tokenizer, heldout, greedy, verifier, recipe, "greedy")
    return pairs[: cfg.n_pairs], held_traces, held_correct, sum(greedy_correct.values()) / max(len(heldout), 1)


def best_of_n(traces, correct: dict[str, bool], scores: list[float]) -> dict:
    """Accuracy of the RM's pick among each problem's N samples, against simple pickers."""
    stats = best_of_n_stats(traces, correct, {tr.id: s for tr, s in zip(traces, scores)})
    return {"rm_pick": stats["picked"], "first_sample": stats["first_sample"], "mean_sample": stats["mean_sample"],
            "oracle": stats["oracle"]}


# --------------------------------------------------------------------------- training


def encode_pairs(tokenizer, pairs: list[Pair], max_length: int, margin: float | None) -> tuple[list[dict], int]:
    """TRL's processed format (chosen_ids, rejected_ids [, margin]); returns (rows, number dropped as too long)."""
    rows = []
    for p in pairs:
        row = {"chosen_ids": encode(tokenizer, p.prompt, p.chosen), "rejected_ids": encode(tokenizer, p.prompt, p.rejected)}
        if max(len(row["chosen_ids"]), len(row["rejected_ids"])) > max_length:
            continue
        if margin is not None:
            row["margin"] = margin * p.margin
        rows.append(row)
    return rows, len(pairs) - len(rows)


def pairwise_accuracy(model, tokenizer, rows: list[dict], batch_size: int) -> float:
    """Share of pairs with score(chosen) > score(rejected) (a tie counts as wrong)."""
    chosen = score_ids(model, tokenizer.pad_token_id, [r["chosen_ids"] for r in rows], batch_size)
    rejected = score_ids(model, tokenizer.pad_token_id, [r["rejected_ids"] for r in rows], batch_size)
    return sum(c > r for c, r in zip(chosen, rejected)) / max(len(rows), 1)


def reward_config(recipe, out_dir: str, world: int):
    """TRL RewardConfig from the recipe: lr, schedule, train.batch_size pairs per optimizer step."""
    from trl import RewardConfig

    t, m, cfg = recipe.train, recipe.model, recipe.algorithm
    per_device = max(1, min(t.micro_batch_size, t.batch_size // world))
    if t.batch_size % (per_device * world):
        raise UserError(f"train.batch_size={t.batch_size} (pairs per optimizer step) must be a multiple "
                        f"of train.micro_batch_size x processes = {per_device * world}")
    schedule = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[t.lr_schedule]
    return RewardConfig(
        output_dir=out_dir, learning_rate=t.lr, lr_scheduler_type=schedule, warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay, adam_beta1=t.adam_beta1, adam_beta2=t.adam_beta2,
        max_grad_norm=t.max_grad_norm, per_device_train_batch_size=per_device,
        gradient_accumulation_steps=t.batch_size // (per_device * world),
        num_train_epochs=t.epochs, max_steps=t.max_steps if t.max_steps > 0 else -1,
        gradient_checkpointing=m.gradient_checkpointing, bf16=m.dtype == "bfloat16", fp16=m.dtype == "float16",
        center_rewards_coefficient=cfg.center_rewards_coefficient or None, max_length=None,  # filtered here
        logging_steps=recipe.log.every, save_strategy="no", report_to="none", disable_tqdm=True,
        seed=recipe.seed, use_cpu=not torch.cuda.is_available(), model_init_kwargs={"dtype": "float32", **model_options(m)},
    )


def peft_config(m):
    if not m.lora_r:
        return None
    from peft import LoraConfig

    target = m.lora_target if m.lora_target == "all-linear" else [s.strip() for s in m.lora_target.split(",")]
    # SEQ_CLS keeps the new score head fully trainable (modules_to_save) next to the adapters
    return LoraConfig(task_type="SEQ_CLS", r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                      target_modules=target, modules_to_save=["score"])


def _callback(run, log, max_seconds: float):
    """One console line and one metrics.jsonl row per TRL log; stops at train.max_seconds."""
    from transformers.trainer_callback import TrainerCallback  # the Trainer stack: imports peft
    class Report(TrainerCallback):
        t0 = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            if state.is_world_process_zero and logs and "loss" in logs:
                run.metrics({"step": state.global_step, **logs})
                log(f"step {state.global_step}/{state.max_steps}  loss {logs['loss']:.4f}  "
                    f"pair accuracy {logs.get('accuracy', float('nan')):.3f}  margin {logs.get('margin', 0.0):.3f}")

        def on_step_end(self, args, state, control, **kw):
            if max_seconds and time.perf_counter() - self.t0 >= max_seconds:
                control.should_training_stop = True

    return Report()


def load_data(recipe, path: str, tokenizer, log):
    """(train pairs, held-out pairs, self-eval extras or None) for the recipe's data and pairs_from."""
    cfg, d = recipe.algorithm, recipe.data
    mode = cfg.pairs_from
    if mode == "auto":
        mode = "self" if get_task(d.train) else "file"
    if mode == "self":
        pairs, held_traces, held_correct, greedy = collect_self_data(recipe, path, tokenizer, log)
        return pairs, self_pairs(held_traces, held_correct, cfg.pairs_per_prompt), (held_traces, held_correct, greedy)
    if get_task(d.train):
        raise UserError(f"algorithm.pairs_from={cfg.pairs_from} needs a data file; data.train is the synthetic task "
                        f"{d.train}")
    train = file_pairs(d.train, d.train_split, cfg, d)
    if d.eval:
        return train, file_pairs(d.eval, d.eval_split, cfg, d), None
    train, held = split_by_prompt(train, lambda p: json.dumps(p.prompt), cfg.eval_share, recipe.seed)
    return train, held, None


def train(recipe, log=print) -> dict:
    """Train a reward model; writes reward_model/, summary.json and metrics.jsonl in the run folder."""
    from transformers.trainer_callback import PrinterCallback
    from trl import RewardTrainer

    cfg = recipe.algorithm
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    accelerator = make_accelerator(recipe.model.dtype)  # a fresh accelerate state when the precision changed
    run = RunLog(recipe, enabled=accelerator.is_main_process)  # the run folder is checked before any work
    path = resolve_model_path(recipe.model.path, log=log)
    # data.chat_template gives one to a tokenizer that has none (a base model)
    tokenizer = load_tokenizer(path, chat_template=not recipe.data.chat_template, **hub_options(recipe.model))
    set_chat_template(tokenizer, recipe.data.chat_template)
    train_pairs, held_pairs, extras = load_data(recipe, path, tokenizer, log)
    margin = cfg.margin_scale if cfg.margin == "data" else None
    train_rows, dropped = encode_pairs(tokenizer, train_pairs, cfg.max_length, margin)
    held_rows, held_dropped = encode_pairs(tokenizer, held_pairs, cfg.max_length, margin)
    if not train_rows:
        raise UserError(f"every training pair is longer than algorithm.max_length={cfg.max_length} tokens")
    trainer = RewardTrainer(model=path, args=reward_config(recipe, str(run.path), accelerator.num_processes),
                            train_dataset=datasets.Dataset.from_list(train_rows), processing_class=tokenizer,
                            peft_config=peft_config(recipe.model))
    trainer.remove_callback(PrinterCallback)  # disable_tqdm swaps the bar for a dict print per log
    trainer.add_callback(_callback(run, log, recipe.train.max_seconds))
    summary = {"algorithm": "reward_model", "model": recipe.model.path, "train_pairs": len(train_rows),
               "heldout_pairs": len(held_rows), "dropped_too_long": dropped + held_dropped}
    rm = trainer.model
    if held_rows:
        summary["pairwise_accuracy_before"] = pairwise_accuracy(rm, tokenizer, held_rows, cfg.eval_batch_size)
    bon_before = _best_of_n(rm, tokenizer, extras, cfg.eval_batch_size) if extras else None
    t0 = time.perf_counter()
    trainer.train()
    summary.update({"steps": trainer.state.global_step, "train_seconds": round(time.perf_counter() - t0, 2)})
    rm = accelerator.unwrap_model(trainer.model)
    if held_rows:
        summary["pairwise_accuracy_after"] = pairwise_accuracy(rm, tokenizer, held_rows, cfg.eval_batch_size)
    if extras:
        summary["best_of_n"] = {"n": recipe.generation.n, "problems": len({tr.group_id for tr in extras[0]}),
                                "greedy": extras[2], "rm_pick_before": bon_before["rm_pick"],
                                **_best_of_n(rm, tokenizer, extras, cfg.eval_batch_size)}
    _finish(run, trainer, tokenizer, summary, train_pairs if extras else None, recipe.model.lora_r > 0, log)
    return summary


def _best_of_n(model, tokenizer, extras, batch_size: int) -> dict:
    traces, correct, _ = extras
    rows = [encode(tokenizer, tr.prompt, tr.completion.text) for tr in traces]
    return best_of_n(traces, correct, score_ids(model, tokenizer.pad_token_id, rows, batch_size))


def _finish(run, trainer, tokenizer, summary: dict, self_pairs_made, lora: bool, log) -> None:
    """Save the RM (LoRA merged: a plain HF folder), the pairs made from the policy, the summary."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not run.enabled:
        return
    out = run.ensure() / "reward_model"
    if lora:  # fold the adapters in: the reward (and vLLM, transformers) load a plain model
        model = model.merge_and_unload()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if self_pairs_made:
        with open(run.path / "pairs.jsonl", "w") as f:
            f.writelines(json.dumps(asdict(p)) + "\n" for p in self_pairs_made)
    summary["reward_model"] = str(out)
    summary["run_dir"] = str(run.path)
    run.write_json("summary.json", summary)
    flat = {k: v for k, v in summary.items() if k != "best_of_n"}
    flat.update({f"best_of_n/{k}": v for k, v in summary.get("best_of_n", {}).items()})
    table = summary_table(flat, title="reward model")
    (run.path / "summary.txt").write_text(table + "\n")
    log(table)


PROGRAM = Program(name="reward_model", Recipe=RewardModelRecipe, train=train, check=check)
