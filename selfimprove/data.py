"""Prompt sets: synthetic tasks with exact answers, and user data from files or `datasets`.

Everything becomes a list of `Example` (an id, chat messages, a reference answer, a task name).
Chat formatting goes through the tokenizer's own chat template in `encode_prompts`.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

from selfimprove.errors import UserError

SYNTHETIC_TASKS = ("arith", "translate")  # translate: the toy language pair (toy_mt.py)


@dataclass
class Example:
    id: str
    prompt: list[dict]  # chat messages
    answer: str | None
    task: str


# --------------------------------------------------------------------------- arith


def arith_problem(rng: random.Random, cfg) -> tuple[str, str]:
    """One `a op b=` problem and its exact answer. `cfg` is a DataConfig (ops and operand ranges)."""
    op = rng.choice(cfg.ops)
    a = rng.randint(cfg.min_operand, cfg.max_operand)
    if op == "*":
        # a two-digit times one-digit product keeps multiplication learnable by a 1M model
        b = rng.randint(2, cfg.max_multiplier)
        value = a * b
    else:
        b = rng.randint(cfg.min_operand, cfg.max_operand)
        value = a + b if op == "+" else a - b
    return f"{a}{op}{b}=", str(value)


def _arith_example(question: str, answer: str, idx: str, system_prompt: str | None) -> Example:
    msgs = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": question}
    ]
    return Example(id=idx, prompt=msgs, answer=answer, task="arith")


def arith_heldout(cfg) -> list[Example]:
    """The fixed held-out split: `n_heldout` distinct problems drawn with `heldout_seed`."""
    rng = random.Random(cfg.heldout_seed)
    seen, out = set(), []
    for _ in range(cfg.n_heldout * 50):
        if len(out) == cfg.n_heldout:
            break
        q, a = arith_problem(rng, cfg)
        if q not in seen:
            seen.add(q)
            out.append(_arith_example(q, a, f"arith-eval-{len(out)}", cfg.system_prompt))
    if len(out) < cfg.n_heldout:
        raise UserError(f"data: the arith problem space is too small for n_heldout={cfg.n_heldout}")
    return out


def arith_train(cfg, n: int, seed: int) -> list[Example]:
    """`n` training problems (repeats allowed), never one of the held-out questions."""
    heldout = {ex.prompt[-1]["content"] for ex in arith_heldout(cfg)}
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        q, a = arith_problem(rng, cfg)
        if q not in heldout:
            out.append(_arith_example(q, a, f"arith-train-{len(out)}", cfg.system_prompt))
    return out


# --------------------------------------------------------------------------- toy translation


def translate_examples(cfg, split: str, n: int = 0, seed: int = 0) -> list[Example]:
    """The toy language pair: training prompts have no reference (monolingual sources, as in SSR);
    the fixed held-out split (n_heldout sentences, heldout_seed) keeps references for evaluation."""
    from selfimprove import toy_mt

    heldout = toy_mt.heldout_sources(cfg.n_heldout, cfg.heldout_seed)
    sources = heldout if split == "heldout" else toy_mt.train_sources(n, seed, set(heldout))

    def example(i: int, src: str) -> Example:
        msgs = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []) + [
            {"role": "user", "content": toy_mt.PROMPT.format(source=src)}]
        ref = toy_mt.translate(src) if split == "heldout" else None
        return Example(id=f"translate-{split}-{i}", prompt=msgs, answer=ref, task="translate")

    return [example(i, s) for i, s in enumerate(sources)]


# --------------------------------------------------------------------------- files and datasets


def _read_rows(source: str, split: str) -> list[dict]:
    if source.startswith("hf:"):
        import datasets

        name = source[3:]
        try:
            return list(datasets.load_dataset(name, split=split))
        except Exception as e:  # offline, or no such dataset: one line, not a traceback
            raise UserError(f"data: cannot load Hugging Face dataset '{name}' split '{split}': {e}") from None
    path = Path(source)
    if not path.exists():
        raise UserError(f"data: file not found: {source}")
    suffix = path.suffix.lower()
    if path.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise UserError(f"data: {source} has no split '{split}' (splits: {', '.join(ds)})")
            ds = ds[split]
        return list(ds)
    if suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        if suffix == ".json" and text.lstrip().startswith("["):
            return json.loads(text)
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"data: {source} line {i} is not valid JSON ({e.msg})") from None
        return rows
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise UserError(f"data: unsupported file type '{suffix}' for {source} (jsonl, json, csv, parquet, a datasets folder)")


def rows_to_examples(rows: list[dict], source: str, cfg, task: str = "data") -> list[Example]:
    if not rows:
        raise UserError(f"data: {source} is empty")
    out = []
    for i, row in enumerate(rows):
        if cfg.prompt_template:
            row = {**row, cfg.prompt_column: _fill_template(cfg.prompt_template, row, source, i)}
        if cfg.prompt_column not in row:
            raise UserError(
                f"data: {source} row {i + 1} has no prompt column '{cfg.prompt_column}' "
                f"(columns: {', '.join(map(str, row))}); set data.prompt_column"
            )
        prompt = row[cfg.prompt_column]
        if isinstance(prompt, str):
            msgs = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, list) and all(isinstance(m, dict) and "content" in m for m in prompt):
            msgs = [dict(m) for m in prompt]
        else:
            raise UserError(f"data: {source} row {i + 1}: '{cfg.prompt_column}' must be text or a list of chat messages")
        if cfg.system_prompt and msgs[0].get("role") != "system":
            msgs = [{"role": "system", "content": cfg.system_prompt}] + msgs
        if cfg.answer_column and cfg.answer_column not in row:
            raise UserError(
                f"data: {source} row {i + 1} has no answer column '{cfg.answer_column}' "
                f"(columns: {', '.join(map(str, row))}); set data.answer_column (null for prompts without answers)"
            )
        answer = row.get(cfg.answer_column) if cfg.answer_column else None
        out.append(Example(id=str(row.get("id", f"{task}-{i}")), prompt=msgs,
                           answer=None if answer is None else str(answer), task=str(row.get("task", task))))
    return out


def _fill_template(template: str, row: dict, source: str, i: int) -> str:
    try:
        return template.format(**row)
    except KeyError as e:
        raise UserError(f"data: {source} row {i + 1} has no column {e} used by data.prompt_template "
                        f"(columns: {', '.join(map(str, row))})") from None
    except (IndexError, ValueError) as e:
        raise UserError(f"data.prompt_template is not a valid format string: {e}") from None


def jsonl_objects(path: str, what: str) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSONL file; a bad line is a UserError
    naming `what` (the command), the file and the line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UserError(f"{what}: cannot read {path}: {e.strerror}") from None
    out = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{what}: {path} line {no} is not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{what}: {path} line {no} is not a JSON object")
        out.append((no, row))
    return out


def require_answers(examples: list[Example], source: str, column: str) -> None:
    for i, ex in enumerate(examples):
        if ex.answer is None:
            raise UserError(f"data: {source} row {i + 1} has no answer column '{column}'; set data.answer_column")


def load_examples(source: str, cfg, split: str, n_train: int = 0, seed: int = 0) -> list[Example]:
    """Examples of a source: a synthetic task (train stream of n_train, or held-out), or a file/dataset."""
    if source == "arith":
        return arith_train(cfg, n_train, seed) if split == "train" else arith_heldout(cfg)
    if source == "arith:heldout":
        return arith_heldout(cfg)
    if source in ("translate", "translate:heldout"):
        return translate_examples(cfg, "train" if source == "translate" and split == "train" else "heldout",
                                  n_train, seed)
    return rows_to_examples(_read_rows(source, split), source, cfg)


# --------------------------------------------------------------------------- tokenisation


def encode_prompts(tokenizer, examples: list[Example], max_prompt_tokens: int) -> list[list[int]]:
    """Chat-formatted prompt token ids through the tokenizer's chat template."""
    if not examples:
        return []
    texts = [tokenizer.apply_chat_template(ex.prompt, tokenize=False, add_generation_prompt=True) for ex in examples]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    for ex, row in zip(examples, ids):
        if len(row) > max_prompt_tokens:
            raise UserError(
                f"data: prompt of example '{ex.id}' has {len(row)} tokens, more than "
                f"data.max_prompt_tokens={max_prompt_tokens}"
            )
    return ids
