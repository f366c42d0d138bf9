"""Self-J judge training (Ye & Ng, arXiv 2409.00935; algorithms.md section 4), the `selfj` program.

1. Labels (section 4.1): the policy samples `generation.n` answers per training and held-out question;
   judge_labels.build_labels adds self-evaluation z1, cosine z2 and the combined digit label.
2. Baseline: the untrained policy rates the held-out answers itself, reference-free (student view).
3. Training (sections 4.2, 4.5): one network, two views of each sample (teacher with the reference,
   student without), target = label digit + EOS; L = CE_T + alpha CE_S + alpha_kd KL(p_T || p_S) with the
   teacher detached (nusnlp/Self-J kd.py, Trainer.compute_loss; alpha 0.3 and alpha_kd 2 are the code's
   values), the CE averaged over the response tokens (digit, EOS) and the KL at the digit only (the
   paper's code skips the EOS id). Full fine-tuning or LoRA, AdamW, accelerate data parallelism (each process trains on its
   shard; the loss is scaled so any process count gives the gradient of the global batch).
4. The trained judge's student-view scores on the held-out answers; summary.json holds both blocks
   (`baseline`, `judge`) plus the label signals themselves (`signals`) for reference. The judge is saved
   with the templates it was trained with (reward.selfj reads them back).
"""

from __future__ import annotations

import math
import random
import shutil
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from accelerate.utils import gather_object, set_seed

from reward import build_rewards
from reward import selfj as sj
from selfimprove.config import RewardSpec
from selfimprove.data import get_task, load_examples, require_answers, set_chat_template
from selfimprove.distributed import accumulation_boundary, empty_backward, global_max, global_sums, make_accelerator
from selfimprove.errors import UserError
from selfimprove.evaluation.metrics import judge_report
from selfimprove.optim import make_optimizer, make_scheduler
from selfimprove.options import opt
from selfimprove.policy import add_lora, context_length, hub_options, load_model, load_tokenizer, resolve_model_path
from selfimprove.programs import FitConfig, Program, ProgramRecipe, SamplingConfig, check_program_recipe
from selfimprove.programs.judge_labels import DEFAULT_EMBEDDER, answer_and_label, load_embedder
from selfimprove.rollout import CORRECT_THRESHOLD
from selfimprove.runlog import RunLog
from selfimprove.trace import Trace, dump_jsonl


@dataclass
class Config:
    name: str = opt("selfj", "the program")
    policy: str | None = opt(None, "model that answers and self-evaluates (z1); null: model.path (the judge's start)")
    n_train_questions: int = opt(500, "0: every question of data.train (files); a synthetic task needs a number")
    n_eval_questions: int = opt(200, "the first n of the held-out split or data.eval; 0: all")
    w_self: float = opt(0.5, "label weight of self-evaluation: z = (w_self z1/9 + w_cos max(cos, 0)) / (w_self + w_cos)")
    w_cos: float = opt(0.5, "label weight of the answer-reference cosine")
    embedding_model: str = opt(DEFAULT_EMBEDDER, "sentence-transformers path or name for the cosine z2")
    teacher_template: str = opt(sj.TEACHER_TEMPLATE, "with-reference view (also the self-evaluation prompt)")
    student_template: str = opt(sj.STUDENT_TEMPLATE, "reference-free view (the judge at inference)")
    verifier: str | None = opt("math_correct", "reward deciding true correctness for evaluation; null: none")
    verifier_kwargs: dict = opt({}, "options bound to the verifier (as rewards[].kwargs)")
    correct_threshold: float = opt(CORRECT_THRESHOLD, "a verifier value >= this is correct")
    apply_chat_template: bool | str = opt("auto", "auto: views and the policy's prompts through the chat template, raw in "
                                   "prompt_format when the tokenizer has none (a base model) | true | false: raw")
    prompt_format: str = opt(sj.RAW_FORMAT, "the raw prompt around a view or question (the reference's wizardlm "
                             "template); {instruction} is replaced")
    alpha: float = opt(0.3, "weight of the student CE (paper's code)")
    alpha_kd: float = opt(2.0, "weight of KL(teacher || student) (paper's code)")
    score_batch_size: int = opt(64, "prompts per no-grad scoring forward")


@dataclass
class SelfJRecipe(ProgramRecipe):
    """The recipe of the `selfj` program."""

    generation: SamplingConfig = opt(SamplingConfig(n=4), "how the policy samples its answers (n per question)")
    algorithm: Config = opt(Config(), "Self-J's options")
    train: FitConfig = opt(FitConfig(epochs=2, batch_size=128, micro_batch_size=64), "judge training (paper: 2 "
                           "epochs, batch 128)")


def check(recipe: SelfJRecipe) -> list[str]:
    check_program_recipe(recipe)
    cfg = recipe.algorithm
    errs = sj.template_errors(cfg.teacher_template, True, "algorithm.teacher_template")
    errs += sj.template_errors(cfg.student_template, False, "algorithm.student_template")
    if isinstance(cfg.apply_chat_template, bool):  # YAML's true/false
        cfg.apply_chat_template = str(cfg.apply_chat_template).lower()
    if cfg.apply_chat_template not in sj.CHAT_MODES:
        errs.append(f"algorithm.apply_chat_template must be auto, true or false, got {cfg.apply_chat_template!r}")
    if "{instruction}" not in cfg.prompt_format:
        errs.append("algorithm.prompt_format has no {instruction} placeholder")
    if cfg.score_batch_size < 1:
        errs.append("algorithm.score_batch_size must be >= 1")
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
    d, cfg = recipe.data, recipe.algorithm
    if d.answer_column is None:
        raise UserError("selfj: data.answer_column must name the gold references (Self-J labels need them)")
    if get_task(d.train) and not cfg.n_train_questions:
        raise UserError(f"selfj: algorithm.n_train_questions must be > 0 for the synthetic task {d.train}")
    train = load_examples(d.train, d, d.train_split, n_train=cfg.n_train_questions, seed=recipe.seed)
    eval_src = d.eval or (d.train if get_task(d.train) else None)
    if eval_src is None:
        raise UserError("selfj: data.eval must name held-out questions with references (a file or dataset)")
    heldout = load_examples(eval_src, d, d.eval_split)
    train = train[: cfg.n_train_questions or None]
    heldout = heldout[: cfg.n_eval_questions or None]
    require_answers(train, d.train, d.answer_column)
    require_answers(heldout, eval_src, d.answer_column)
    rank, world = acc.process_index, acc.num_processes
    return train[rank::world], heldout[rank::world]


def raw_of(tokenizer, cfg: Config) -> str | None:
    """The raw prompt format this tokenizer's views are rendered in, or None for its chat template."""
    return sj.raw_format(tokenizer, cfg.apply_chat_template, cfg.prompt_format)


def encode_pairs(tokenizer, traces, cfg: Config, max_len: int) -> list[tuple[list[int], list[int]]]:
    """(teacher ids, student ids) per trace: the view's prompt (chat or raw) + label digit + EOS."""
    digits = sj.digit_token_ids(tokenizer)
    qs = [sj.question_of(tr) for tr in traces]
    ans = [tr.completion.text for tr in traces]
    raw = raw_of(tokenizer, cfg)
    teacher = sj.render_views(tokenizer, cfg.teacher_template, qs, ans, [tr.answer or "" for tr in traces], raw)
    student = sj.render_views(tokenizer, cfg.student_template, qs, ans, None, raw)
    out = []
    for tr, t, s in zip(traces, teacher, student):
        tail = [digits[tr.meta["selfj.label"]], tokenizer.eos_token_id]
        if len(t) + 2 > max_len:
            raise UserError(f"selfj: the teacher view of '{tr.id}' has {len(t) + 2} tokens, more than the "
                            f"model's context or data.max_prompt_tokens ({max_len})")
        out.append((t + tail, s + tail))
    return out


# --------------------------------------------------------------------------- loss


def distill_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(p_T || p_S); [N, V] logits at the N target positions; teacher detached."""
    p_t = torch.softmax(teacher_logits.detach().float(), dim=-1)
    log_s = torch.log_softmax(student_logits.float(), dim=-1)
    return F.kl_div(log_s, p_t, reduction="batchmean")


def selfj_loss(teacher_logits, student_logits, targets, alpha: float = 0.3, alpha_kd: float = 2.0):
    """L = CE_T + alpha CE_S + alpha_kd KL(p_T || p_S) over [N, V] logits at N target positions."""
    ce_t = F.cross_entropy(teacher_logits.float(), targets)
    ce_s = F.cross_entropy(student_logits.float(), targets)
    kl = distill_kl(teacher_logits, student_logits)
    return ce_t + alpha * ce_s + alpha_kd * kl, {"ce_teacher": ce_t.item(), "ce_student": ce_s.item(), "kl": kl.item()}


def pair_loss(model, pairs, pad_id: int, cfg: Config):
    """Self-J loss of a micro-batch of pairs; (loss, metrics). Both sequences end with digit, EOS, so
    with left padding their predicting positions are the last three but one: -3 (digit) and -2 (EOS)."""
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


def steps_per_epoch_of(acc, n_local: int, batch_size: int) -> int:
    """Optimizer steps per epoch, the same on every process (set by the largest shard)."""
    if batch_size % acc.num_processes:
        raise UserError(f"train.batch_size={batch_size} must be divisible by the {acc.num_processes} processes")
    longest = int(global_max(acc, n_local))
    return max(1, math.ceil(longest / (batch_size // acc.num_processes)))


def total_steps_of(t: FitConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of the run: epochs x steps per epoch (a fraction of the last epoch allowed), capped
    at max_steps."""
    total = max(1, round(t.epochs * steps_per_epoch))
    return min(total, t.max_steps) if t.max_steps else total


def train_epochs(acc, model, opt, sched, pairs, pad_id: int, recipe, run, log) -> list[dict]:
    """Epochs over this process's pairs; every process takes the same number of optimizer steps."""
    cfg, t = recipe.algorithm, recipe.train
    per_rank = t.batch_size // acc.num_processes
    steps_per_epoch = steps_per_epoch_of(acc, len(pairs), t.batch_size)
    total = total_steps_of(t, steps_per_epoch)
    history, t0, step = [], time.perf_counter(), 0
    model.train()
    for epoch in range(math.ceil(total / steps_per_epoch)):
        order = list(range(len(pairs)))
        random.Random(recipe.seed * 1000 + epoch * 7 + acc.process_index).shuffle(order)
        for k in range(min(steps_per_epoch, total - step)):
            batch = [pairs[i] for i in order[k * per_rank:(k + 1) * per_rank]]
            row = _optimizer_step(acc, model, opt, sched, batch, pad_id, cfg, t)
            step += 1
            row.update({"step": step, "epoch": epoch + 1, "time/elapsed": time.perf_counter() - t0})
            history.append(row)
            if step % recipe.log.every == 0 or step == 1:
                run.metrics(row)
                if acc.is_main_process and recipe.log.progress:
                    log(f"step {step}/{total}  loss {row['loss']:.3f}  "
                        f"ce_t {row['ce_teacher']:.3f}  ce_s {row['ce_student']:.3f}  kl {row['kl']:.3f}")
            if t.max_seconds and global_max(acc, time.perf_counter() - t0) >= t.max_seconds:
                return history
    return history


def _optimizer_step(acc, model, opt, sched, batch, pad_id, cfg, t) -> dict:
    """One optimizer step over a batch (micro-batches accumulated); metrics averaged over all samples."""
    (n_global,) = global_sums(acc, [len(batch)])
    mbs = [batch[i:i + t.micro_batch_size] for i in range(0, len(batch), t.micro_batch_size)] or [[]]
    sums = {"loss": 0.0, "ce_teacher": 0.0, "ce_student": 0.0, "kl": 0.0, "digit_acc": 0.0}
    for j, mb in enumerate(mbs):
        with accumulation_boundary(acc, model, last=j == len(mbs) - 1):
            if not mb:  # an empty shard this step: a zero loss keeps the processes' collectives in step
                empty_backward(acc, model, pad_id)
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
    row = {k: v / max(n_global, 1) for k, v in zip(keys, global_sums(acc, [sums[k] for k in keys]))}
    row.update({"grad_norm": grad_norm, "lr": sched.get_last_lr()[0], "samples": int(n_global)})
    return row


# --------------------------------------------------------------------------- the run


def score_heldout(model, tokenizer, traces, cfg: Config, key: str) -> None:
    """Student-view (reference-free) scores of the held-out answers, into trace.meta[key]."""
    scores = sj.judge_scores(model, tokenizer, [sj.question_of(tr) for tr in traces],
                             [tr.completion.text for tr in traces], None, cfg.student_template, cfg.score_batch_size,
                             raw_of(tokenizer, cfg))
    for tr, (s, _) in zip(traces, scores):
        tr.meta[key] = s


def report_of(rows: list[dict], key: str) -> dict:
    labels = [r["meta"]["selfj.label"] for r in rows]
    has_truth = bool(rows) and all("selfj.correct" in r["meta"] for r in rows)
    correct = [r["meta"]["selfj.correct"] for r in rows] if has_truth else None
    return judge_report([float(r["meta"][key]) for r in rows], labels, correct)


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


def label_answers(recipe, acc, say) -> tuple:
    """Load and check everything, then sample and label: (judge model, tokenizer, train traces, held-out
    traces with the untrained model's own scores, labelling seconds)."""
    cfg = recipe.algorithm
    # everything a user can get wrong is checked before the (slow) sampling and before anything is written
    train_q, heldout_q = load_questions(recipe, acc)
    verifier = build_rewards([RewardSpec(fn=cfg.verifier, kwargs=cfg.verifier_kwargs)])[0] if cfg.verifier else None
    embedder = load_embedder(cfg.embedding_model, device=str(acc.device))
    path = resolve_model_path(recipe.model.path, log=say)
    # data.chat_template gives one to a tokenizer that has none (a base model); without, auto renders raw
    need_chat = cfg.apply_chat_template == "true" and not recipe.data.chat_template
    tokenizer = load_tokenizer(path, chat_template=need_chat, **hub_options(recipe.model))
    set_chat_template(tokenizer, recipe.data.chat_template)
    sj.digit_token_ids(tokenizer)
    model = load_model(path, "float32", recipe.model).to(acc.device)  # master weights; model.dtype sets autocast
    if cfg.policy is None:
        policy, p_tok = model, tokenizer  # the judge starts from the policy itself
    else:
        p_path = resolve_model_path(cfg.policy, log=say)
        policy = load_model(p_path, recipe.model.dtype).to(acc.device)
        p_tok = load_tokenizer(p_path, chat_template=cfg.apply_chat_template == "true")
    t0 = time.perf_counter()
    seed, rank = recipe.seed * 1000 + acc.process_index, acc.process_index
    train_tr = answer_and_label(policy, p_tok, embedder, verifier, train_q, recipe, seed, f"train-r{rank}")
    eval_tr = answer_and_label(policy, p_tok, embedder, verifier, heldout_q, recipe, seed + 1, f"eval-r{rank}")
    score_heldout(policy, p_tok, eval_tr, cfg, "selfj.baseline")  # the untrained model's own self-evaluation
    label_s = time.perf_counter() - t0
    say(f"labels: {len(train_tr)} training and {len(eval_tr)} held-out answers per process in {label_s:.0f}s")
    return model, tokenizer, train_tr, eval_tr, label_s


def train(recipe, log=print) -> dict:
    """Build labels, score the baseline, train the judge, score it; returns the summary (also in summary.json)."""
    cfg, t = recipe.algorithm, recipe.train
    acc = make_accelerator(recipe.model.dtype)
    if t.threads:
        torch.set_num_threads(t.threads)
    set_seed(recipe.seed)
    say = log if acc.is_main_process else (lambda *a: None)
    run = RunLog(recipe, enabled=acc.is_main_process)  # the run folder is checked before any work
    model, tokenizer, train_tr, eval_tr, label_s = label_answers(recipe, acc, say)

    max_len = min(context_length(model), recipe.data.max_prompt_tokens + 2)
    pairs = encode_pairs(tokenizer, train_tr, cfg, max_len)
    encode_pairs(tokenizer, eval_tr, cfg, max_len)  # the held-out views must fit the judge too
    if recipe.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if recipe.model.lora_r:
        model = add_lora(model, recipe.model)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], t, acc)
    # the recipe's schedule over this run's optimizer steps (epochs x steps per epoch)
    sched = make_scheduler(opt, t, total_steps_of(t, steps_per_epoch_of(acc, len(pairs), t.batch_size)))
    model, opt = acc.prepare(model, opt)
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
        write_run(run, judge, tokenizer, cfg, bool(recipe.model.lora_r), train_rows, eval_rows, summary)
        say(summary_text(summary))
    acc.wait_for_everyone()
    acc.end_training()
    return summary


def write_run(run, judge, tokenizer, cfg: Config, lora: bool, train_rows, eval_rows, summary: dict) -> None:
    """The run folder: judge/ (HF format + its templates), labels_{train,eval}.jsonl (traces), summary.json."""
    out = run.ensure()
    save_judge(judge, tokenizer, out / "judge", lora, cfg)
    dump_jsonl([Trace.from_dict(r) for r in train_rows], out / "labels_train.jsonl")
    dump_jsonl([Trace.from_dict(r) for r in eval_rows], out / "labels_eval.jsonl")
    summary.update({"judge_dir": str(out / "judge"), "run_dir": str(out)})
    run.write_json("summary.json", summary)


def save_judge(model, tokenizer, path, lora: bool, cfg: Config) -> None:
    """An HF folder any loader reads (LoRA adapters merged into the base weights first), with the
    templates it was trained with (reward.selfj uses them by default)."""
    if lora:
        model = model.merge_and_unload()
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    sj.save_templates(tmp, cfg.teacher_template, cfg.student_template, raw_of(tokenizer, cfg))
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


PROGRAM = Program(name="selfj", Recipe=SelfJRecipe, train=train, check=check)
