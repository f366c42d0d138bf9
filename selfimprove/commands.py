"""The subcommands: each binds its options to a typed dataclass (the same dialect as recipes) and runs.

Options come from `--config FILE.yaml`, then positional words, then `--key value` / `key=value` on the
command line (later wins); `selfimprove CMD --help` lists them with type, default and description.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from reward import RewardContext, build_rewards
from reward import selfj as sj
from selfimprove.algorithms import get_algorithm
from selfimprove.cct import build_cct
from selfimprove.config import (
    DataConfig,
    EvalConfig,
    Recipe,
    RewardSpec,
    check_ranges,
    check_seed,
    check_temperature,
    check_threads,
)
from selfimprove.data import chat_config, check_lengths, jsonl_objects, load_examples, read_rows, require_answers
from selfimprove.distributed import set_threads
from selfimprove.engines import Sampling, make_engine
from selfimprove.errors import UserError
from selfimprove.evaluation import best_of_n, evaluate, evaluate_two_turn, load_outcomes
from selfimprove.evaluation.classification import PREFILL, choice_rows, evaluate_choices, write_rows
from selfimprove.evaluation.report import metrics_table, plot_self_correction
from selfimprove.export import cli_export
from selfimprove.loop import run
from selfimprove.options import commented_yaml, opt
from selfimprove.policy import context_length, load_model, load_tokenizer, resolve_model_path
from selfimprove.programs import get_program
from selfimprove.recipe import load_recipe
from selfimprove.rollout import CORRECT_THRESHOLD, instruction_text
from selfimprove.tiny.model import build_tiny, ensure_tiny, tiny_path
from selfimprove.trace import dump_jsonl


@dataclass
class TrainOptions:
    recipe: str = opt(help="a YAML recipe (recipes/...)", positional=True)


def cmd_train(o: TrainOptions, overrides: list[str]) -> int:
    recipe = load_recipe(o.recipe, overrides)
    # offline programs (judge and reward-model training) own their loop; on-policy methods share loop.run
    program = get_program(recipe.algorithm.name)
    summary = program.train(recipe) if program is not None else run(recipe)
    if "run_dir" in summary:
        print(f"run folder: {summary['run_dir']}")
    return 0


# --------------------------------------------------------------------------- eval


@dataclass
class EvalOptions:
    model: str = opt(help="a model: a checkpoint folder, a Hugging Face model or LoRA adapter folder, or tiny / "
                     "tiny-correct", positional=True)
    data: str = opt(help="a data file, a datasets folder, hf:NAME, or a synthetic task (arith: its held-out split)")
    split: str = opt("test", "split of data (files with splits, hf:, synthetic tasks)")
    n: int = opt(500, "problems: the first n")
    reward: str = opt("math_correct", "the reward that decides correctness")
    correct_threshold: float = opt(CORRECT_THRESHOLD, "a value of the reward >= this is correct")
    prompt_column: str = opt("prompt", "column with the prompt (text or chat messages)")
    answer_column: str | None = opt("answer", "column with the reference answer")
    source_column: str | None = opt(None, "column with the bare source text (data.source_column; comet_kiwi's src)")
    apply_chat_template: str = opt("auto", "auto: text prompts as they are, chat messages templated | true | false "
                                   "(data.apply_chat_template)")
    task_options: dict = opt({}, "options of a synthetic task (data.task_options)")
    max_new_tokens: int = opt(256, "tokens per answer at most")
    temperature: float = opt(0.0, "0: greedy")
    seed: int = opt(0, "random seed of the sampler")
    threads: int = opt(0, "torch threads (0: torch's default)")
    out: str | None = opt(None, "write the result (metrics) as JSON here")
    traces: str | None = opt(None, "write the traces as JSONL here")
    turns: int = opt(1, "2: self-correction (Acc@t1/t2, deltas, CL, CS, RSS)")
    k: int = opt(1, "samples per problem (two-turn evaluation, best-of-k)")
    instruction: str = opt("reask", "second-turn instruction: reask, score (SCoRe, MATH), score_code (SCoRe, code), "
                           "confidence, critique, or any text")
    estimator: str = opt("auto", "two-turn: sampled | probabilities (label-token probabilities over the data's "
                         "choices/labels) | auto: probabilities when the data has a choices or labels column")
    prefill: str = opt(PREFILL, "probabilities: the assistant reply's prefill before the label token")
    plot: str | None = opt(None, "two-turn: write the outcome plot (PNG) here")
    pick: str | None = opt(None, "best-of-k: the reward that picks one of the k samples (judge_model, reward_model, "
                           "self_judge, ...); reward still decides correctness")
    pick_kwargs: dict = opt({}, "options of the picker, e.g. {model: runs/x/judge}")


def _generation_inputs(o, rewards_specs: list[RewardSpec], turns: int = 1):
    """(examples, bound rewards, tokenizer, hf engine) for the sampling subcommands (eval, cct); every
    input is checked before sampling starts: data, rewards, model, and prompt + answers within the context."""
    mode = getattr(o, "apply_chat_template", "auto")
    if mode not in ("auto", "true", "false"):
        raise UserError(f"--apply-chat-template must be auto, true or false, got {mode!r}")
    data_cfg = chat_config(DataConfig(prompt_column=o.prompt_column, answer_column=o.answer_column,
                                      source_column=getattr(o, "source_column", None), task_options=o.task_options,
                                      apply_chat_template=mode), turns == 2)
    examples = load_examples(o.data, data_cfg, o.split, n_train=o.n, seed=o.seed)[: o.n]
    require_answers(examples, o.data, o.answer_column)
    rewards = build_rewards(rewards_specs)
    path = resolve_model_path(o.model)
    tokenizer, model = load_tokenizer(path, chat_template=False), load_model(path)
    if turns == 2 and tokenizer.chat_template is None:
        raise UserError(f"two-turn evaluation extends a conversation, but the tokenizer of {o.model} has no chat "
                        "template")
    extra = second_turn_tokens(tokenizer, examples, o.instruction) + o.max_new_tokens if turns == 2 else 0
    check_lengths(tokenizer, context_length(model), 10**9,
                  [(examples, o.max_new_tokens, "--max-new-tokens", extra)])
    set_threads(o.threads, "--threads")
    return examples, rewards, tokenizer, make_engine("hf", model, tokenizer, seed=o.seed)


def second_turn_tokens(tokenizer, examples, instruction: str) -> int:
    """The most tokens a second turn adds before attempt 2 (the closed first answer and the instruction)."""
    most = 0
    for ex in examples:
        one = tokenizer.apply_chat_template(ex.prompt, tokenize=False, add_generation_prompt=True)
        two = tokenizer.apply_chat_template(ex.prompt + [{"role": "assistant", "content": ""}, {
            "role": "user", "content": instruction_text(instruction, ex.prompt[-1]["content"])}], tokenize=False,
            add_generation_prompt=True)
        most = max(most, len(tokenizer(two, add_special_tokens=False)["input_ids"])
                   - len(tokenizer(one, add_special_tokens=False)["input_ids"]))
    return most


def check_options(o, ranges: dict[str, str], outputs: tuple[str, ...] = ()) -> None:
    """Range checks of a subcommand's options (one line naming --the-option) and its output paths (their
    folder exists and is writable), before any model is loaded."""
    check_ranges(o, "--", ranges, flag=True)
    if hasattr(o, "temperature"):
        check_temperature(o.temperature, "--temperature")
    if hasattr(o, "seed"):
        check_seed(o.seed, "--seed")
    if hasattr(o, "threads"):
        check_threads(o.threads, "--threads")
    for key in outputs:
        path = getattr(o, key)
        if path:
            check_output(path, f"--{key.replace('_', '-')}")


def check_output(path: str, key: str) -> None:
    """An output file: its folder must exist and be writable, and it must not be a folder itself."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{key}: {path} is a folder; give a file name")
    check_output_folder(p.parent, key)


def check_output_folder(folder: Path, key: str) -> None:
    if not folder.is_dir():
        raise UserError(f"{key}: the folder {folder} does not exist (create it first)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{key}: cannot write in {folder} (permission denied)")


SAMPLING_RANGES = {"n": ">=1", "max_new_tokens": ">=1"}


def _write_json(path: str | None, obj: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(obj, f, indent=2)


def cmd_eval(o: EvalOptions, overrides: list[str]) -> int:
    check_options(o, {**SAMPLING_RANGES, "k": ">=1"}, ("out", "traces", "plot"))
    checks = [(o.turns in (1, 2), f"--turns must be 1 or 2, got {o.turns}"),
              (not o.pick or o.k >= 2, f"--pick needs --k >= 2 samples per problem, got {o.k}"),
              (not (o.pick and o.turns == 2), "--pick is best-of-k over first attempts; it does not go with --turns 2"),
              (o.estimator != "probabilities" or o.turns == 2, "--estimator probabilities needs --turns 2")]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    rows = choice_rows(o) if o.turns == 2 else None  # multiple-choice data: label probabilities, no sampling
    result, traces = evaluate_choices(o, rows) if rows is not None else _eval_sampled(o)
    if o.turns == 2 and o.plot:
        plot_self_correction(result, o.plot)
    _write_json(o.out, result)
    if o.traces:
        (write_rows if rows is not None else dump_jsonl)(traces, o.traces)
    return 0


def _eval_sampled(o: EvalOptions):
    specs = [RewardSpec(fn=o.reward)]
    if o.pick:
        specs.append(RewardSpec(fn=o.pick, name=f"pick:{o.pick}", kwargs=o.pick_kwargs))
    examples, rewards, tokenizer, engine = _generation_inputs(o, specs, o.turns)
    ctx = RewardContext(tokenizer, engine)
    if o.turns == 2:
        sampling = Sampling(temperature=o.temperature, max_new_tokens=o.max_new_tokens)
        result, traces = evaluate_two_turn(engine, tokenizer, examples, rewards[:1], ctx, o.k, sampling,
                                           o.instruction, threshold=o.correct_threshold)
        print(metrics_table(result, title=f"self-correction: {o.model} on {o.data} (k={o.k}, {o.instruction})"))
    elif o.pick:
        eval_cfg = EvalConfig(n=o.n, max_new_tokens=o.max_new_tokens, temperature=o.temperature or 1.0,
                              correct_threshold=o.correct_threshold)
        m, traces = best_of_n(engine, tokenizer, examples, rewards[0], rewards[1], o.k, eval_cfg, ctx)
        print(f"best-of-{o.k} with {o.pick}: {m['picked']:.1%} (first sample {m['first_sample']:.1%}, "
              f"mean sample {m['mean_sample']:.1%}, oracle {m['oracle']:.1%}) on {m['problems']} problems")
        result = {"model": o.model, "data": o.data, "reward": o.reward, "pick": o.pick, **m}
    else:
        eval_cfg = EvalConfig(n=o.n, reward=rewards[0].name, max_new_tokens=o.max_new_tokens,
                              temperature=o.temperature, correct_threshold=o.correct_threshold)
        acc, traces = evaluate(engine, tokenizer, examples, rewards, eval_cfg, ctx)
        result = {"model": o.model, "data": o.data, "n": len(examples), "reward": o.reward, "accuracy": acc}
        print(f"accuracy {acc:.1%} on {len(examples)} problems of {o.data} ({o.reward})")
    return result, traces


# --------------------------------------------------------------------------- metrics


@dataclass
class MetricsOptions:
    file: str = opt(help="a traces JSONL (eval --turns 2 --traces) or {problem, correct1, correct2} rows",
                    positional=True)
    out: str | None = opt(None, "write the metrics as JSON here")
    correct_threshold: float = opt(CORRECT_THRESHOLD, "traces: a turn reward >= this is correct")


def cmd_metrics(o: MetricsOptions, overrides: list[str]) -> int:
    check_options(o, {}, ("out",))
    m = load_outcomes(o.file, o.correct_threshold)
    print(metrics_table(m, title=f"self-correction: {o.file}"))
    _write_json(o.out, m)
    return 0


# --------------------------------------------------------------------------- cct and sft


@dataclass
class CCTOptions:
    model: str = opt(help="the model whose first attempts make the data", positional=True)
    data: str = opt(help="questions with answers: a data file, a datasets folder, hf:NAME, or a synthetic task")
    out: str = opt(help="output JSONL")
    split: str = opt("train", "split of data")
    n: int = opt(200, "questions to sample first attempts for")
    k: int = opt(4, "first attempts per question")
    rows: int = opt(400, "rows in the mixture")
    keep_share: float = opt(0.4, "share of keep-a-correct-answer (CLT) rows")
    plain_share: float = opt(0.0, "share of plain SFT rows (SFT + CCT)")
    instruction: str = opt("reask", "second-turn instruction: reask, score (SCoRe, MATH), score_code (SCoRe, code), "
                           "confidence, critique, or any text")
    reward: str = opt("math_correct", "the reward that decides correctness")
    correct_threshold: float = opt(CORRECT_THRESHOLD, "a value of the reward >= this is correct")
    prompt_column: str = opt("prompt", "column with the prompt")
    answer_column: str | None = opt("answer", "column with the reference answer")
    task_options: dict = opt({}, "options of a synthetic task")
    temperature: float = opt(1.0, "sampling temperature of the first attempts")
    max_new_tokens: int = opt(256, "tokens per attempt at most")
    seed: int = opt(0, "random seed")
    threads: int = opt(0, "torch threads (0: torch's default)")


def cmd_cct(o: CCTOptions, overrides: list[str]) -> int:
    check_options(o, {**SAMPLING_RANGES, "k": ">=1", "rows": ">=1", "keep_share": "[0,1]", "plain_share": "[0,1)"},
                  ("out",))
    examples, rewards, tokenizer, engine = _generation_inputs(o, [RewardSpec(fn=o.reward)], turns=2)
    rows = build_cct(engine, tokenizer, examples, rewards, RewardContext(tokenizer, engine), o.rows, o.keep_share,
                     o.k, o.instruction, o.plain_share, Sampling(temperature=o.temperature,
                                                                 max_new_tokens=o.max_new_tokens), o.seed,
                     o.correct_threshold)
    with open(o.out + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(o.out + ".tmp", o.out)
    kinds = {k: sum(r["kind"] == k for r in rows) for k in ("clt", "cst", "sft")}
    print(f"wrote {len(rows)} rows to {o.out}: {kinds['clt']} keep (CLT), {kinds['cst']} fix (CST), {kinds['sft']} plain")
    return 0


@dataclass
class SFTOptions:
    model: str = opt(help="the model to fine-tune", positional=True)
    data: str = opt(help="prompt-completion JSONL (e.g. CCT data)", positional=True)
    out: str = opt(help="output model folder (a new or empty folder)")
    overwrite: bool = opt(False, "replace the output folder when it already holds files")
    epochs: float = opt(1.0, "passes over the data")
    lr: float = opt(5e-5, "learning rate")
    batch_size: int = opt(16, "rows per step")
    seed: int = opt(0, "random seed")


def cmd_sft(o: SFTOptions, overrides: list[str]) -> int:
    """Supervised fine-tuning on prompt-completion JSONL (e.g. CCT data) with TRL's SFTTrainer."""
    from trl import SFTConfig, SFTTrainer

    check_options(o, {"epochs": ">0", "lr": ">0", "batch_size": ">=1"})
    check_model_folder_output(o.out, o.overwrite)
    rows = read_rows(o.data, "train")
    if not rows:
        raise UserError(f"sft: {o.data} has no rows")
    for i, r in enumerate(rows, 1):
        if "prompt" not in r or "completion" not in r:
            raise UserError(f"sft: {o.data} row {i} needs 'prompt' and 'completion' (conversational prompt-completion rows)")
    path = resolve_model_path(o.model)
    tokenizer, model = load_tokenizer(path), load_model(path)
    check_sft_lengths(tokenizer, context_length(model), rows, o.data)
    ds = datasets.Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    cfg = SFTConfig(output_dir=o.out, num_train_epochs=o.epochs, learning_rate=o.lr,
                    per_device_train_batch_size=o.batch_size, report_to="none", save_strategy="no",
                    logging_steps=10, use_cpu=not torch.cuda.is_available(), seed=o.seed,
                    disable_tqdm=True)  # stderr stays for errors; the loss is printed every 10 steps
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tokenizer)
    trainer.train()
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise UserError(f"sft: the fine-tuned weights are not finite (inf or NaN); nothing was saved to {o.out}")
    if o.overwrite and Path(o.out).is_dir():
        shutil.rmtree(o.out)
    trainer.save_model(o.out)
    tokenizer.save_pretrained(o.out)
    print(f"fine-tuned model: {o.out}")
    return 0


# --------------------------------------------------------------------------- judge


def check_model_folder_output(out: str, overwrite: bool) -> None:
    """A model folder to write: a new or empty folder (or --overwrite), inside a writable folder."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise UserError(f"--out: {out} is a file, not a folder")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        raise UserError(f"--out: {out} already holds files; choose a new folder or pass --overwrite")
    check_output_folder(p if p.is_dir() else p.parent, "--out")


def _messages(value) -> list[dict]:
    return value if isinstance(value, list) else [{"role": "user", "content": str(value)}]


def check_sft_lengths(tokenizer, ctx_len: int, rows: list[dict], source: str) -> None:
    """Every prompt + completion must fit the model's context (TRL would truncate it silently)."""
    for i, r in enumerate(rows, 1):
        try:
            text = tokenizer.apply_chat_template(_messages(r["prompt"]) + _messages(r["completion"]), tokenize=False)
        except Exception as e:  # a malformed message list
            raise UserError(f"sft: {source} row {i} is not a valid conversation ({type(e).__name__}: {e})") from None
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if n > ctx_len:
            raise UserError(f"sft: {source} row {i} has {n} tokens, more than the model's context of {ctx_len}")


@dataclass
class JudgeOptions:
    model: str = opt(help="a trained judge folder (a selfj run's judge/) or any causal LM", positional=True)
    input: str = opt(help="JSONL rows with question and answer (and optionally reference) fields", positional=True)
    out: str | None = opt(None, "write the scored rows here (default: stdout)")
    question_column: str = opt("question", "field with the question")
    answer_column: str = opt("answer", "field with the answer")
    reference_column: str = opt("reference", "field with the reference (rows without one: reference-free view)")
    template: str | None = opt(None, "reference-free view with {question} {answer} (default: the judge's own)")
    reference_template: str | None = opt(None, "with-reference view with {question} {answer} {reference}")
    batch_size: int = opt(64, "prompts per forward pass")
    threads: int = opt(0, "torch threads (0: torch's default)")


def _read_judge_rows(path: str, fields: list[str]) -> list[dict]:
    """JSONL rows of `selfimprove judge`; a bad line or a missing field names the file, row and field."""
    if not os.path.isfile(path):
        raise UserError(f"judge: input file not found: {path}")
    rows = []
    for i, row in jsonl_objects(path, "judge"):
        for field in fields:
            if not isinstance(row.get(field), str):
                raise UserError(f"judge: {path} row {i} has no '{field}' field (a string)")
        rows.append(row)
    if not rows:
        raise UserError(f"judge: {path} has no rows")
    return rows


def cmd_judge(o: JudgeOptions, overrides: list[str]) -> int:
    """Self-J scores of (question, answer[, reference]) rows with a trained judge (one forward pass each)."""
    check_options(o, {"batch_size": ">=1"}, ("out",))
    rows = _read_judge_rows(o.input, [o.question_column, o.answer_column])
    for key, tpl, ref in (("template", o.template, False), ("reference_template", o.reference_template, True)):
        errs = sj.template_errors(tpl, ref, key) if tpl else []
        if errs:
            raise UserError(f"judge: {errs[0]}")
    set_threads(o.threads, "--threads")
    model, tokenizer, (teacher, student), raw = sj.load_judge(resolve_model_path(o.model))
    # a row with a (non-empty) reference is scored in the with-reference view, the others reference-free
    has_ref = [bool(r.get(o.reference_column)) for r in rows]
    views = []
    for view, template in ((True, o.reference_template or teacher), (False, o.template or student)):
        idx = [i for i, h in enumerate(has_ref) if h == view]
        refs = [str(rows[i][o.reference_column]) for i in idx] if view else None
        ids = sj.render_views(tokenizer, template, [rows[i][o.question_column] for i in idx],
                              [rows[i][o.answer_column] for i in idx], refs, raw)
        for i, row in zip(idx, ids):  # the score is the next token: the prompt must leave room for it
            if len(row) + 1 > context_length(model):
                raise UserError(f"judge: {o.input} row {i + 1} is {len(row)} tokens in the judge's template, more "
                                f"than the model's context of {context_length(model)}")
        views.append((view, idx, ids))
    for view, idx, ids in views:
        probs = sj.digit_probs(model, tokenizer, ids, o.batch_size).tolist()
        for i, p in zip(idx, probs):
            rows[i].update({"score": sj.expected_score(p), "probs": p, "view": "with_reference" if view else "without"})
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
    if not o.out:
        sys.stdout.writelines(lines)
        return 0
    with open(o.out + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(lines)
    os.replace(o.out + ".tmp", o.out)
    mean = sum(r["score"] for r in rows) / max(len(rows), 1)
    print(f"wrote {len(rows)} scored rows to {o.out} (mean score {mean:.2f} of 9)")
    return 0


@dataclass
class ExportOptions:
    checkpoint: str = opt(help="a checkpoint (runs/NAME/checkpoints/step-N), or a model or LoRA adapter folder",
                          positional=True)
    out: str | None = opt(None, "the folder to write (default: the run folder's final/)")
    merge_lora: bool = opt(False, "merge a LoRA adapter into its base (PEFT merge_and_unload): a plain model")
    push_to_hub: str | None = opt(None, "then push the folder to this Hugging Face model repo (user/name)")
    overwrite: bool = opt(False, "replace the output folder when it already holds files")


def cmd_export(o: ExportOptions, overrides: list[str]) -> int:
    """A clean Hugging Face folder with a model card from a checkpoint (selfimprove/export.py)."""
    cli_export(o.checkpoint, o.out, o.merge_lora, o.overwrite, o.push_to_hub)
    return 0


# --------------------------------------------------------------------------- tiny


@dataclass
class TinyOptions:
    force: bool = opt(False, "rebuild even if cached")


def cmd_tiny(o: TinyOptions, overrides: list[str]) -> int:
    print(build_tiny(tiny_path()) if o.force else ensure_tiny())
    return 0


@dataclass
class ConfigOptions:
    algorithm: str = opt("nft", "an on-policy algorithm (nft, grpo, rft, score, ssr) or a program (selfj, "
                         "reward_model)", positional=True)


def cmd_config(o: ConfigOptions, overrides: list[str]) -> int:
    """A complete recipe of `algorithm` with every key at its default and described in a comment."""
    program = get_program(o.algorithm)
    if program is not None:
        recipe = program.Recipe()
    else:
        recipe = Recipe(algorithm=get_algorithm(o.algorithm).Config())
    print(f"# selfimprove train THIS.yaml: every key of a {o.algorithm} recipe at its default (data.train is required)")
    print("\n".join(commented_yaml(recipe)))
    return 0


# name -> (options, function, one-line description)
COMMANDS = {
    "train": (TrainOptions, cmd_train, "train with a recipe (on-policy RL, or judge / reward-model training)"),
    "eval": (EvalOptions, cmd_eval, "accuracy, best-of-k or two-turn self-correction of a model on a task"),
    "metrics": (MetricsOptions, cmd_metrics, "self-correction metrics from a traces or outcomes JSONL file"),
    "cct": (CCTOptions, cmd_cct, "confidence/critique (CCT) SFT data from the model's own first attempts"),
    "sft": (SFTOptions, cmd_sft, "fine-tune on prompt-completion JSONL (CCT data) with TRL's SFTTrainer"),
    "judge": (JudgeOptions, cmd_judge, "score (question, answer[, reference]) JSONL rows with a Self-J judge"),
    "export": (ExportOptions, cmd_export, "a checkpoint as a clean Hugging Face folder with a model card (merge, push)"),
    "tiny": (TinyOptions, cmd_tiny, "build (or locate) the embedded tiny model"),
    "config": (ConfigOptions, cmd_config, "print a complete default recipe of an algorithm or program, with comments"),
}
