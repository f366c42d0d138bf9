"""Self-J judge training (Ye & Ng, arXiv 2409.00935; algorithms.md section 4): `selfimprove train` calls `train`.

1. Labels (section 4.1): the policy samples `n_answers` answers per training and held-out question;
   selfimprove.selfj.build_labels adds self-evaluation z1, cosine z2 and the combined digit label.
2. Baseline: the untrained policy rates the held-out answers itself, reference-free (student view).
3. Training (sections 4.2, 4.5): one network, two views of each sample (teacher with the reference,
   student without), target = label digit + EOS; L = CE_T + alpha CE_S + alpha_kd KL(p_T || p_S), the CE
   averaged over the response tokens (digit, EOS) and the KL at the digit only (the paper's code skips
   the EOS id). Full fine-tuning or LoRA, AdamW, accelerate data parallelism (each process trains on its
   shard; the loss is scaled so any process count gives the gradient of the global batch).
4. The trained judge's student-view scores on the held-out answers; summary.json holds both blocks
   (`baseline`, `judge`) plus the label signals themselves (`signals`) for reference.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass

import torch

from selfimprove import selfj as sj
from selfimprove.errors import UserError


@dataclass
class Config:
    name: str = "selfj"
    policy: str | None = None  # model that answers and self-evaluates (z1); None: model.path (the judge's start)
    n_answers: int = 4  # answers sampled per question (generation.temperature, top_p, max_new_tokens)
    n_train_questions: int = 500  # 0: every question of data.train (files); arith needs a number
    n_eval_questions: int = 200  # the first n of the held-out split (arith) or data.eval; 0: all
    w_self: float = 0.5  # label weights: z = (w_self z1/9 + w_cos max(cos, 0)) / (w_self + w_cos)
    w_cos: float = 0.5
    embedding_model: str = sj.DEFAULT_EMBEDDER  # sentence-transformers path/name for the cosine z2
    teacher_template: str = sj.TEACHER_TEMPLATE  # with-reference view (also the self-evaluation prompt)
    student_template: str = sj.STUDENT_TEMPLATE  # reference-free view (the judge at inference)
    verifier: str | None = "math_correct"  # reward deciding true correctness for evaluation; null: none
    alpha: float = 0.3  # weight of the student CE (paper's code)
    alpha_kd: float = 2.0  # weight of KL(teacher || student) (paper's code)
    epochs: int = 2  # paper: 2
    batch_size: int = 128  # paired samples per optimizer step, over all processes (paper: 128)
    score_batch_size: int = 64  # prompts per no-grad scoring forward


def check(cfg: Config) -> list[str]:
    errs = sj.template_errors(cfg.teacher_template, True, "algorithm.teacher_template")
    errs += sj.template_errors(cfg.student_template, False, "algorithm.student_template")
    for key in ("n_answers", "epochs", "batch_size", "score_batch_size"):
        if getattr(cfg, key) < 1:
            errs.append(f"algorithm.{key} must be >= 1")
    for key in ("n_train_questions", "n_eval_questions"):
        if getattr(cfg, key) < 0:
            errs.append(f"algorithm.{key} must be >= 0")
    if cfg.w_self < 0 or cfg.w_cos < 0 or cfg.w_self + cfg.w_cos <= 0:
        errs.append("algorithm.w_self and algorithm.w_cos must be >= 0 with a positive sum")
    if cfg.alpha < 0 or cfg.alpha_kd < 0:
        errs.append("algorithm.alpha and algorithm.alpha_kd must be >= 0")
    return errs


# --------------------------------------------------------------------------- data


def load_questions(recipe, acc) -> tuple[list, list]:
    """This process's shard of training questions and of held-out questions (all with references)."""
    from selfimprove.data import load_examples, require_answers

    d, cfg = recipe.data, recipe.algorithm
    if d.answer_column is None:
        raise UserError("selfj: data.answer_column must name the gold references (Self-J labels need them)")
    if d.train == "arith" and not cfg.n_train_questions:
        raise UserError("selfj: algorithm.n_train_questions must be > 0 for the synthetic arith task")
    train = load_examples(d.train, d, d.train_split, n_train=cfg.n_train_questions, seed=recipe.seed)
    eval_src = d.eval or (d.train if d.train == "arith" else None)
    if eval_src is None:
        raise UserError("selfj: data.eval must name held-out questions with references (a file or dataset)")
    heldout = load_examples(eval_src, d, d.eval_split)
    train = train[: cfg.n_train_questions or None]
    heldout = heldout[: cfg.n_eval_questions or None]
    require_answers(train, d.train, d.answer_column)
    require_answers(heldout, eval_src, d.answer_column)
    rank, world = acc.process_index, acc.num_processes
    return train[rank::world], heldout[rank::world]


def encode_pairs(tokenizer, traces, cfg: Config, max_len: int) -> list[tuple[list[int], list[int]]]:
    """(teacher ids, student ids) per trace: the view's chat prompt + label digit + EOS."""
    digits = sj.digit_token_ids(tokenizer)
    qs = [sj.question_of(tr) for tr in traces]
    ans = [tr.completion.text for tr in traces]
    teacher = sj.render_views(tokenizer, cfg.teacher_template, qs, ans, [tr.answer or "" for tr in traces])
    student = sj.render_views(tokenizer, cfg.student_template, qs, ans)
    out = []
    for tr, t, s in zip(traces, teacher, student):
        tail = [digits[tr.meta["selfj.label"]], tokenizer.eos_token_id]
        if len(t) + 2 > max_len:
            raise UserError(f"selfj: the teacher view of '{tr.id}' has {len(t) + 2} tokens, more than the "
                            f"model's context or data.max_prompt_tokens ({max_len})")
        out.append((t + tail, s + tail))
    return out


# --------------------------------------------------------------------------- loss


def pair_loss(model, pairs, pad_id: int, cfg: Config):
    """Self-J loss of a micro-batch of pairs; (loss, metrics). Both sequences end with digit, EOS, so
    with left padding their predicting positions are the last three but one: -3 (digit) and -2 (EOS)."""
    from selfimprove.algorithms.selfj_loss import distill_kl, selfj_loss

    logits = sj.last_logits(model, [p[0] for p in pairs] + [p[1] for p in pairs], pad_id, 3)[:, :2]
    teacher, student = logits[: len(pairs)], logits[len(pairs):]
    targets = torch.tensor([[p[0][-2], p[0][-1]] for p in pairs], device=logits.device)
    V = logits.shape[-1]
    # CE over both response tokens (token mean, as the paper's causal-LM loss) ...
    ce, m = selfj_loss(teacher.reshape(-1, V), student.reshape(-1, V), targets.reshape(-1), cfg.alpha, 0.0)
    # ... and the distillation term at the digit only (kd.py masks the EOS id out of the KL)
    kl = distill_kl(teacher[:, 0], student[:, 0])
    m["kl"] = kl.item()
    m["digit_acc"] = (student[:, 0].argmax(-1) == targets[:, 0]).float().mean().item()
    return ce + cfg.alpha_kd * kl, m


# --------------------------------------------------------------------------- training


def make_optimizer(model, recipe, total_steps: int, device_type: str):
    from selfimprove.loop import lr_lambda

    t = recipe.train
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t.lr,
                            betas=(t.adam_beta1, t.adam_beta2), weight_decay=t.weight_decay,
                            fused=device_type in ("cpu", "cuda"))
    # the recipe's schedule over this run's optimizer steps (epochs x steps per epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(dataclasses.replace(t, steps=total_steps, mini_batches=1)))
    return opt, sched


def steps_per_epoch_of(acc, n_local: int, batch_size: int) -> int:
    """Optimizer steps per epoch, the same on every process (set by the largest shard)."""
    if batch_size % acc.num_processes:
        raise UserError(f"algorithm.batch_size={batch_size} must be divisible by the {acc.num_processes} processes")
    longest = int(acc.reduce(torch.tensor([n_local], device=acc.device), "max").item())
    return max(1, math.ceil(longest / (batch_size // acc.num_processes)))


def train_epochs(acc, model, opt, sched, pairs, pad_id: int, recipe, run, log) -> list[dict]:
    """Epochs over this process's pairs; every process takes the same number of optimizer steps."""
    cfg, t, world = recipe.algorithm, recipe.train, acc.num_processes
    per_rank = cfg.batch_size // world
    steps_per_epoch = steps_per_epoch_of(acc, len(pairs), cfg.batch_size)
    history, t0, step = [], time.perf_counter(), 0
    model.train()
    for epoch in range(cfg.epochs):
        order = list(range(len(pairs)))
        random.Random(recipe.seed * 1000 + epoch * 7 + acc.process_index).shuffle(order)
        for k in range(steps_per_epoch):
            batch = [pairs[i] for i in order[k * per_rank:(k + 1) * per_rank]]
            row = _optimizer_step(acc, model, opt, sched, batch, pad_id, cfg, t)
            step += 1
            row.update({"step": step, "epoch": epoch + 1, "time/elapsed": time.perf_counter() - t0})
            history.append(row)
            if step % recipe.log.every == 0 or step == 1:
                run.metrics(row)
                if acc.is_main_process and recipe.log.progress:
                    log(f"step {step}/{steps_per_epoch * cfg.epochs}  loss {row['loss']:.3f}  "
                        f"ce_t {row['ce_teacher']:.3f}  ce_s {row['ce_student']:.3f}  kl {row['kl']:.3f}")
            elapsed = float(acc.reduce(torch.tensor([time.perf_counter() - t0], device=acc.device), "max"))
            if t.max_seconds and elapsed >= t.max_seconds:
                return history
    return history


def _optimizer_step(acc, model, opt, sched, batch, pad_id, cfg, t) -> dict:
    """One optimizer step over a batch (micro-batches accumulated); metrics averaged over all samples."""
    from contextlib import nullcontext

    n_global = acc.reduce(torch.tensor([float(len(batch))], device=acc.device), "sum").item()
    mbs = [batch[i:i + t.micro_batch_size] for i in range(0, len(batch), t.micro_batch_size)] or [[]]
    sums = {"loss": 0.0, "ce_teacher": 0.0, "ce_student": 0.0, "kl": 0.0, "digit_acc": 0.0}
    for j, mb in enumerate(mbs):
        with nullcontext() if j == len(mbs) - 1 else acc.no_sync(model):
            if not mb:  # an empty shard this step: a zero loss keeps the processes' collectives in step
                acc.backward(sj.last_logits(model, [[pad_id]], pad_id, 1).sum() * 0.0)
                continue
            loss, m = pair_loss(model, mb, pad_id, cfg)
            # mean over the global batch: DDP averages over processes, hence the factor world
            acc.backward(loss * len(mb) * acc.num_processes / n_global)
            m["loss"] = loss.item()
            for key in sums:
                sums[key] += m[key] * len(mb)
    grad_norm = float(acc.clip_grad_norm_(model.parameters(), t.max_grad_norm))
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    keys = sorted(sums)
    tot = acc.reduce(torch.tensor([sums[k] for k in keys], device=acc.device), "sum").tolist()
    row = {k: v / max(n_global, 1) for k, v in zip(keys, tot)}
    row.update({"grad_norm": grad_norm, "lr": sched.get_last_lr()[0], "samples": int(n_global)})
    return row


# --------------------------------------------------------------------------- the run


def answer_and_label(policy, tokenizer, embedder, verifier, examples, recipe, seed: int, tag: str) -> list:
    """The policy's sampled answers to `examples` (n_answers each) with their Self-J labels in meta."""
    from selfimprove.data import encode_prompts
    from selfimprove.engines import make_engine
    from selfimprove.evaluate import make_traces
    from selfimprove.loop import sampling_of

    cfg = recipe.algorithm
    prompt_ids = encode_prompts(tokenizer, examples, recipe.data.max_prompt_tokens)
    sampling = dataclasses.replace(sampling_of(recipe.generation), n=cfg.n_answers)
    samples = make_engine(recipe.generation.backend, policy, tokenizer, seed=seed).generate(prompt_ids, sampling)
    traces = make_traces(examples, prompt_ids, samples, tokenizer, tag=tag)
    sj.build_labels(traces, policy, tokenizer, embedder, verifier, cfg.teacher_template, cfg.w_self, cfg.w_cos,
                    cfg.score_batch_size)
    return traces


def score_heldout(model, tokenizer, traces, cfg: Config, key: str) -> None:
    """Student-view (reference-free) scores of the held-out answers, into trace.meta[key]."""
    scores = sj.judge_scores(model, tokenizer, [sj.question_of(tr) for tr in traces],
                             [tr.completion.text for tr in traces], None, cfg.student_template, cfg.score_batch_size)
    for tr, (s, _) in zip(traces, scores):
        tr.meta[key] = s


def report_of(rows: list[dict], key: str) -> dict:
    labels = [r["meta"]["selfj.label"] for r in rows]
    has_truth = bool(rows) and all("selfj.correct" in r["meta"] for r in rows)
    correct = [r["meta"]["selfj.correct"] for r in rows] if has_truth else None
    return sj.judge_report([float(r["meta"][key]) for r in rows], labels, correct)


def summarize(train_rows: list[dict], eval_rows: list[dict]) -> dict:
    labels = [r["meta"]["selfj.label"] for r in train_rows]
    out = {"n_train_answers": len(train_rows), "n_eval_answers": len(eval_rows),
           "train_label_counts": [labels.count(k) for k in range(10)],
           "baseline": report_of(eval_rows, "selfj.baseline"), "judge": report_of(eval_rows, "selfj.judge"),
           # the label signals themselves (they see the reference): how much the judge could learn
           "signals": {name: report_of(eval_rows, key) for name, key in
                       (("self_eval_with_reference", "selfj.z1"), ("cosine", "selfj.cos"), ("label", "selfj.label"))}}
    if eval_rows and all("selfj.correct" in r["meta"] for r in eval_rows):
        out["eval_correct_rate"] = sum(r["meta"]["selfj.correct"] for r in eval_rows) / len(eval_rows)
    return out


def train(recipe, log=print) -> dict:
    """Build labels, score the baseline, train the judge, score it; returns the summary (also in summary.json)."""
    from accelerate.utils import gather_object, set_seed

    from selfimprove.config import RewardSpec
    from selfimprove.distributed import make_accelerator
    from selfimprove.policy import (
        add_lora,
        context_length,
        load_model,
        load_tokenizer,
        resolve_model_path,
    )
    from selfimprove.runlog import RunLog
    from selfimprove.scoring import build_rewards

    cfg = recipe.algorithm
    acc = make_accelerator(recipe.model.dtype)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    set_seed(recipe.seed)
    say = log if acc.is_main_process else (lambda *a: None)
    # everything a user can get wrong is checked before the (slow) sampling and before anything is written
    train_q, heldout_q = load_questions(recipe, acc)
    verifier = build_rewards([RewardSpec(fn=cfg.verifier)])[0] if cfg.verifier else None
    embedder = sj.load_embedder(cfg.embedding_model, device=str(acc.device))
    path = resolve_model_path(recipe.model.path, log=say)
    tokenizer = load_tokenizer(path)
    sj.digit_token_ids(tokenizer)
    model = load_model(path, "float32").to(acc.device)  # master weights; model.dtype sets autocast
    if cfg.policy is None:
        policy, p_tok = model, tokenizer  # the judge starts from the policy itself
    else:
        p_path = resolve_model_path(cfg.policy, log=say)
        policy, p_tok = load_model(p_path, recipe.model.dtype).to(acc.device), load_tokenizer(p_path)

    t0 = time.perf_counter()
    seed = recipe.seed * 1000 + acc.process_index
    train_tr = answer_and_label(policy, p_tok, embedder, verifier, train_q, recipe, seed, f"train-r{acc.process_index}")
    eval_tr = answer_and_label(policy, p_tok, embedder, verifier, heldout_q, recipe, seed + 1, f"eval-r{acc.process_index}")
    score_heldout(policy, p_tok, eval_tr, cfg, "selfj.baseline")  # the untrained model's own self-evaluation
    label_s = time.perf_counter() - t0
    say(f"labels: {len(train_tr)} training and {len(eval_tr)} held-out answers per process in {label_s:.0f}s")
    del embedder
    if policy is not model:
        del policy

    max_len = min(context_length(model), recipe.data.max_prompt_tokens + 2)
    pairs = encode_pairs(tokenizer, train_tr, cfg, max_len)
    encode_pairs(tokenizer, eval_tr, cfg, max_len)  # the held-out views must fit the judge too
    if recipe.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if recipe.model.lora_r:
        model = add_lora(model, recipe.model)
    total = cfg.epochs * steps_per_epoch_of(acc, len(pairs), cfg.batch_size)
    opt, sched = make_optimizer(model, recipe, total, acc.device.type)
    model, opt = acc.prepare(model, opt)
    run = RunLog(recipe, enabled=acc.is_main_process)
    t1 = time.perf_counter()
    history = train_epochs(acc, model, opt, sched, pairs, tokenizer.pad_token_id, recipe, run, say)
    train_s = time.perf_counter() - t1
    judge = acc.unwrap_model(model)
    score_heldout(judge, tokenizer, eval_tr, cfg, "selfj.judge")

    train_rows = gather_object([tr.to_dict() for tr in train_tr])
    eval_rows = gather_object([tr.to_dict() for tr in eval_tr])
    summary = {"algorithm": "selfj", "model": recipe.model.path, "steps": len(history),
               "label_seconds": round(label_s, 2), "train_seconds": round(train_s, 2), **summarize(train_rows, eval_rows)}
    if acc.is_main_process:
        write_run(run, judge, tokenizer, bool(recipe.model.lora_r), train_rows, eval_rows, summary)
        say(summary_text(summary))
    acc.wait_for_everyone()
    acc.end_training()
    return summary


def write_run(run, judge, tokenizer, lora: bool, train_rows, eval_rows, summary: dict) -> None:
    """The run folder: judge/ (HF format), labels_{train,eval}.jsonl (traces), summary.json."""
    from selfimprove.trace import Trace, dump_jsonl

    out = run.ensure()
    save_judge(judge, tokenizer, out / "judge", lora)
    dump_jsonl([Trace.from_dict(r) for r in train_rows], out / "labels_train.jsonl")
    dump_jsonl([Trace.from_dict(r) for r in eval_rows], out / "labels_eval.jsonl")
    summary.update({"judge_dir": str(out / "judge"), "run_dir": str(out)})
    run.write_json("summary.json", summary)


def save_judge(model, tokenizer, path, lora: bool) -> None:
    """An HF folder any loader reads: LoRA adapters are merged into the base weights first."""
    import shutil

    if lora:
        model = model.merge_and_unload()
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def summary_text(s: dict) -> str:
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    lines = [(f"Self-J on {s['n_eval_answers']} held-out answers ({s['n_train_answers']} training answers, "
              f"{s['steps']} steps)"), "                 pearson_correct  spearman_correct  pearson_label  keep-50%-acc"]
    for name in ("baseline", "judge"):
        b = s[name]
        sel = (b.get("selective_accuracy") or {}).get("decline_50")
        lines.append(f"  {name:<14} {f(b.get('pearson_correct')):>15} {f(b.get('spearman_correct')):>17} "
                     f"{f(b['pearson_label']):>14} {f(sel):>13}")
    return "\n".join(lines)
