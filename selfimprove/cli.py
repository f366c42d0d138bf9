"""`selfimprove train RECIPE [key=value ...]`, `selfimprove eval MODEL`, `selfimprove tiny`.

Works the same under `accelerate launch -m selfimprove ...`. A user mistake prints one line
(`error: ...`) and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from selfimprove.errors import UserError


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if not torch.cuda.is_available():  # DeepSpeed (when installed) otherwise warns about it on every run
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*past_key_values.*")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars


def cmd_train(args) -> int:
    from selfimprove.config import load_recipe
    from selfimprove.loop import run

    from selfimprove.algorithms import get_algorithm

    recipe = load_recipe(args.recipe, args.overrides)
    # offline trainers (judge and reward-model training) own their loop; RL methods share loop.run
    trainer = getattr(get_algorithm(recipe.algorithm.name), "train", None)
    summary = trainer(recipe) if trainer is not None else run(recipe)
    if "run_dir" in summary:
        print(f"run folder: {summary['run_dir']}")
    return 0


def cmd_eval(args) -> int:
    from reward import RewardContext
    from selfimprove.config import EvalConfig
    from selfimprove.evaluate import evaluate
    from selfimprove.trace import dump_jsonl

    if not args.model:
        raise UserError("eval needs a MODEL (argument, or 'model:' in --config)")
    if args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")
    if args.k < 1:
        raise UserError(f"--k must be >= 1, got {args.k}")
    if args.turns not in (1, 2):
        raise UserError(f"--turns must be 1 or 2, got {args.turns}")
    examples, rewards, tokenizer, engine = _load_for_generation(args)
    source = args.data
    if args.turns == 2:
        return _eval_two_turn(args, engine, tokenizer, examples, rewards)
    if args.pick:
        return _eval_best_of_n(args, engine, tokenizer, examples, rewards[0])
    eval_cfg = EvalConfig(n=args.n, reward=rewards[0].name, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature)
    acc, traces = evaluate(engine, tokenizer, examples, rewards, eval_cfg, RewardContext(tokenizer, engine))
    result = {"model": args.model, "data": source, "n": len(examples), "reward": args.reward, "accuracy": acc}
    print(f"accuracy {acc:.1%} on {len(examples)} problems of {source} ({args.reward})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    if args.traces:
        dump_jsonl(traces, args.traces)
    return 0


def _eval_best_of_n(args, engine, tokenizer, examples, verifier) -> int:
    from reward import RewardContext
    from selfimprove.config import EvalConfig, RewardSpec
    from selfimprove.evaluate import best_of_n
    from selfimprove.scoring import build_rewards
    from selfimprove.trace import dump_jsonl

    if args.k < 2:
        raise UserError(f"--pick needs --k >= 2 samples per problem, got {args.k}")
    try:
        kwargs = json.loads(args.pick_kwargs) if args.pick_kwargs else {}
    except json.JSONDecodeError as e:
        raise UserError(f"--pick-kwargs is not valid JSON ({e.msg})") from None
    if not isinstance(kwargs, dict):
        raise UserError("--pick-kwargs must be a JSON object, e.g. '{\"model\": \"runs/x/judge\"}'")
    (picker,) = build_rewards([RewardSpec(fn=args.pick, name=f"pick:{args.pick}", kwargs=kwargs)])
    eval_cfg = EvalConfig(n=args.n, max_new_tokens=args.max_new_tokens, temperature=args.temperature or 1.0)
    m, traces = best_of_n(engine, tokenizer, examples, verifier, picker, args.k, eval_cfg,
                          RewardContext(tokenizer, engine))
    print(f"best-of-{args.k} with {args.pick}: {m['picked']:.1%} (first sample {m['first_sample']:.1%}, "
          f"mean sample {m['mean_sample']:.1%}, oracle {m['oracle']:.1%}) on {m['problems']} problems")
    _write_outputs(args, {"model": args.model, "data": args.data, "reward": args.reward, "pick": args.pick, **m})
    if args.traces:
        dump_jsonl(traces, args.traces)
    return 0


def _eval_two_turn(args, engine, tokenizer, examples, rewards) -> int:
    from reward import RewardContext
    from selfimprove.engines import Sampling
    from selfimprove.report import metrics_table, plot_self_correction
    from selfimprove.selfcorrect import evaluate_two_turn
    from selfimprove.trace import dump_jsonl

    sampling = Sampling(temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    m, traces = evaluate_two_turn(engine, tokenizer, examples, rewards, RewardContext(tokenizer, engine), args.k,
                                  sampling, args.instruction)
    print(metrics_table(m, title=f"self-correction: {args.model} on {args.data} (k={args.k}, {args.instruction})"))
    _write_outputs(args, m)
    if args.traces:
        dump_jsonl(traces, args.traces)
    if args.plot:
        plot_self_correction(m, args.plot)
    return 0


def _write_outputs(args, m: dict) -> None:
    if args.out:
        with open(args.out, "w") as f:
            json.dump(m, f, indent=2)


def cmd_metrics(args) -> int:
    from selfimprove.report import metrics_table
    from selfimprove.selfcorrect import load_outcomes

    m = load_outcomes(args.file)
    print(metrics_table(m, title=f"self-correction: {args.file}"))
    _write_outputs(args, m)
    return 0


def _load_for_generation(args):
    import torch

    from selfimprove.config import DataConfig, RewardSpec
    from selfimprove.data import load_examples, require_answers
    from selfimprove.engines import make_engine
    from selfimprove.policy import load_model, load_tokenizer, resolve_model_path
    from selfimprove.scoring import build_rewards

    data_cfg = DataConfig(prompt_column=args.prompt_column, answer_column=args.answer_column)
    examples = load_examples(args.data, data_cfg, args.split, n_train=args.n, seed=args.seed)[: args.n]
    require_answers(examples, args.data, args.answer_column)
    rewards = build_rewards([RewardSpec(fn=args.reward)])
    path = resolve_model_path(args.model)
    tokenizer, model = load_tokenizer(path), load_model(path)
    if args.threads:
        torch.set_num_threads(args.threads)
    return examples, rewards, tokenizer, make_engine("hf", model, tokenizer, seed=args.seed)


def _require(args, *names) -> None:
    for name in names:
        if not getattr(args, name, None):
            raise UserError(f"selfimprove {args.command} needs {name} (an argument, or '{name}:' in --config)")


def cmd_cct(args) -> int:
    from reward import RewardContext
    from selfimprove.cct import build_cct
    from selfimprove.engines import Sampling

    _require(args, "model", "out")
    examples, rewards, tokenizer, engine = _load_for_generation(args)
    rows = build_cct(engine, tokenizer, examples, rewards, RewardContext(tokenizer, engine), args.rows,
                     args.keep_share, args.k, args.instruction, args.plain_share,
                     Sampling(temperature=args.temperature, max_new_tokens=args.max_new_tokens), args.seed)
    with open(args.out + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(args.out + ".tmp", args.out)
    kinds = {k: sum(r["kind"] == k for r in rows) for k in ("clt", "cst", "sft")}
    print(f"wrote {len(rows)} rows to {args.out}: {kinds['clt']} keep (CLT), {kinds['cst']} fix (CST), {kinds['sft']} plain")
    return 0


def cmd_sft(args) -> int:
    """Supervised fine-tuning on prompt-completion JSONL (e.g. CCT data) with TRL's SFTTrainer."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from selfimprove.data import _read_rows
    from selfimprove.policy import load_model, load_tokenizer, resolve_model_path

    _require(args, "model", "data", "out")
    rows = _read_rows(args.data, "train")
    for i, r in enumerate(rows, 1):
        if "prompt" not in r or "completion" not in r:
            raise UserError(f"sft: {args.data} row {i} needs 'prompt' and 'completion' (conversational prompt-completion rows)")
    path = resolve_model_path(args.model)
    ds = datasets.Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    cfg = SFTConfig(output_dir=args.out, num_train_epochs=args.epochs, learning_rate=args.lr,
                    per_device_train_batch_size=args.batch_size, report_to="none", save_strategy="no",
                    logging_steps=10, use_cpu=not __import__("torch").cuda.is_available(), seed=args.seed)
    trainer = SFTTrainer(model=load_model(path), args=cfg, train_dataset=ds, processing_class=load_tokenizer(path))
    trainer.train()
    trainer.save_model(args.out)
    load_tokenizer(path).save_pretrained(args.out)
    print(f"fine-tuned model: {args.out}")
    return 0


def _read_judge_rows(path: str, fields: list[str]) -> list[dict]:
    """JSONL rows of `selfimprove judge`; a bad line or a missing field names the file, row and field."""
    from selfimprove.data import jsonl_objects

    if not os.path.isfile(path):
        raise UserError(f"judge: input file not found: {path}")
    rows = []
    for i, row in jsonl_objects(path, "judge"):
        for field in fields:
            if not isinstance(row.get(field), str):
                raise UserError(f"judge: {path} row {i} has no '{field}' field (a string)")
        rows.append(row)
    return rows


def cmd_judge(args) -> int:
    """Self-J scores of (question, answer[, reference]) rows with a trained judge (one forward pass each)."""
    import torch

    from selfimprove import selfj as sj
    from selfimprove.policy import load_model, load_tokenizer, resolve_model_path

    rows = _read_judge_rows(args.input, [args.question_column, args.answer_column])
    args.template = args.template or sj.STUDENT_TEMPLATE
    args.reference_template = args.reference_template or sj.TEACHER_TEMPLATE
    for key, tpl, ref in (("--template", args.template, False), ("--reference-template", args.reference_template, True)):
        errs = sj.template_errors(tpl, ref, key)
        if errs:
            raise UserError(f"judge: {errs[0]}")
    if args.threads:
        torch.set_num_threads(args.threads)
    path = resolve_model_path(args.model)
    tokenizer, model = load_tokenizer(path), load_model(path)
    # a row with a (non-empty) reference is scored in the with-reference view, the others reference-free
    has_ref = [bool(r.get(args.reference_column)) for r in rows]
    for view, template in ((True, args.reference_template), (False, args.template)):
        idx = [i for i, h in enumerate(has_ref) if h == view]
        refs = [rows[i][args.reference_column] for i in idx] if view else None
        scores = sj.judge_scores(model, tokenizer, [rows[i][args.question_column] for i in idx],
                                 [rows[i][args.answer_column] for i in idx], refs, template, args.batch_size)
        for i, (score, probs) in zip(idx, scores):
            rows[i].update({"score": score, "probs": probs, "view": "with_reference" if view else "without"})
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
    if not args.out:
        sys.stdout.writelines(lines)
        return 0
    with open(args.out + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(lines)
    os.replace(args.out + ".tmp", args.out)
    mean = sum(r["score"] for r in rows) / max(len(rows), 1)
    print(f"wrote {len(rows)} scored rows to {args.out} (mean score {mean:.2f} of 9)")
    return 0


def cmd_tiny(args) -> int:
    from selfimprove.tiny import build_tiny, ensure_tiny, tiny_path

    path = build_tiny(tiny_path()) if args.force else ensure_tiny()
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfimprove", description="LLM self-improvement training")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train with a recipe")
    t.add_argument("recipe", help="a YAML recipe (recipes/...)")
    t.add_argument("overrides", nargs="*", help="key=value or section.key=value")
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("eval", help="accuracy of a model or checkpoint on a task")
    e.add_argument("model", nargs="?", help="'tiny', a checkpoint folder, or a Hugging Face model")
    e.add_argument("--config", help="a YAML file of these options (recipes/eval/*.yaml)")
    e.add_argument("--data", default="arith", help="arith (its held-out split) or a jsonl/csv/parquet file")
    e.add_argument("--split", default="test")
    e.add_argument("--n", type=int, default=500, help="number of problems")
    e.add_argument("--reward", default="math_correct", help="reward that decides correctness (>= 0.5)")
    e.add_argument("--prompt-column", default="prompt")
    e.add_argument("--answer-column", default="answer")
    e.add_argument("--max-new-tokens", type=int, default=16)
    e.add_argument("--temperature", type=float, default=0.0)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--threads", type=int, default=0)
    e.add_argument("--out", help="write the result as JSON here")
    e.add_argument("--traces", help="write the traces as JSONL here")
    e.add_argument("--turns", type=int, default=1, help="2: self-correction (Acc@t1/t2, deltas, CL, CS, RSS)")
    e.add_argument("--k", type=int, default=1, help="samples per problem (two-turn evaluation)")
    e.add_argument("--instruction", default="reask", help="second-turn instruction: reask, score, or any text")
    e.add_argument("--plot", help="two-turn: write the outcome plot (PNG) here")
    e.add_argument("--pick", help="best-of-k: the reward that picks one of the k samples (judge_model, "
                                  "reward_model, self_judge, ...); --reward still decides correctness")
    e.add_argument("--pick-kwargs", help="JSON options of the picker, e.g. '{\"model\": \"runs/x/judge\"}'")
    e.set_defaults(fn=cmd_eval)
    mt = sub.add_parser("metrics", help="self-correction metrics from a traces or outcomes JSONL file")
    mt.add_argument("file")
    mt.add_argument("--out", help="write the metrics as JSON here")
    mt.set_defaults(fn=cmd_metrics)
    c = sub.add_parser("cct", help="build confidence/critique (CCT) SFT data from the model's own first attempts")
    c.add_argument("model", nargs="?")
    c.add_argument("--config", help="a YAML file of these options (recipes/cct/*.yaml)")
    c.add_argument("--data", default="arith", help="arith (its training problems) or a jsonl/csv/parquet file")
    c.add_argument("--split", default="train")
    c.add_argument("--n", type=int, default=200, help="questions to sample first attempts for")
    c.add_argument("--k", type=int, default=4, help="first attempts per question")
    c.add_argument("--rows", type=int, default=400, help="rows in the mixture")
    c.add_argument("--keep-share", type=float, default=0.4, help="share of keep-a-correct-answer (CLT) rows")
    c.add_argument("--plain-share", type=float, default=0.0, help="share of plain SFT rows (SFT + CCT)")
    c.add_argument("--instruction", default="reask")
    c.add_argument("--reward", default="math_correct")
    c.add_argument("--prompt-column", default="prompt")
    c.add_argument("--answer-column", default="answer")
    c.add_argument("--temperature", type=float, default=1.0)
    c.add_argument("--max-new-tokens", type=int, default=16)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, default=0)
    c.add_argument("--out", help="output JSONL (required)")
    c.set_defaults(fn=cmd_cct)
    f = sub.add_parser("sft", help="fine-tune on prompt-completion JSONL (CCT data) with TRL's SFTTrainer")
    f.add_argument("model", nargs="?")
    f.add_argument("data", nargs="?")
    f.add_argument("--config", help="a YAML file of these options (recipes/cct/*.yaml)")
    f.add_argument("--out", help="output model folder (required)")
    f.add_argument("--epochs", type=float, default=1.0)
    f.add_argument("--lr", type=float, default=5e-5)
    f.add_argument("--batch-size", type=int, default=16)
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(fn=cmd_sft)
    j = sub.add_parser("judge", help="score (question, answer[, reference]) JSONL rows with a Self-J judge")
    j.add_argument("model", help="a trained judge folder (a selfj run's judge/) or any causal LM")
    j.add_argument("input", help="JSONL rows with question and answer (and optionally reference) fields")
    j.add_argument("--out", help="write the scored rows here (default: stdout)")
    j.add_argument("--question-column", default="question")
    j.add_argument("--answer-column", default="answer")
    j.add_argument("--reference-column", default="reference")
    j.add_argument("--template", help="reference-free view with {question} {answer} (default: the Self-J recipe's)")
    j.add_argument("--reference-template", help="with-reference view with {question} {answer} {reference}")
    j.add_argument("--batch-size", type=int, default=64)
    j.add_argument("--threads", type=int, default=0)
    j.set_defaults(fn=cmd_judge)
    k = sub.add_parser("tiny", help="build (or locate) the embedded tiny model")
    k.add_argument("--force", action="store_true", help="rebuild even if cached")
    k.set_defaults(fn=cmd_tiny)
    return p


def _apply_config(parser: argparse.ArgumentParser, argv: list[str] | None):
    """`selfimprove eval --config recipes/eval/X.yaml [flags]`: the YAML's keys are the eval flags'
    defaults (dashes or underscores); flags given on the command line still win."""
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is None:
        return args
    import yaml

    try:
        raw = yaml.safe_load(open(args.config)) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"cannot read eval config {args.config}: {e}") from None
    sub = parser._subparsers._group_actions[0].choices[args.command]
    known = {a.dest for a in sub._actions}
    values = {}
    for key, value in raw.items():
        dest = str(key).replace("-", "_")
        if dest not in known or dest in ("config", "fn"):
            raise UserError(f"{args.config}: unknown key '{key}' (keys are the flags of 'selfimprove {args.command}')")
        values[dest] = value
    sub.set_defaults(**values)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = _apply_config(parser, argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _quiet_libraries()
    try:
        return args.fn(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
