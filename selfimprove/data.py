"""Prompt sets: user data from files or `datasets`, and synthetic tasks found by name.

Everything becomes a list of `Example` (an id, chat messages, a reference answer, a task name).
Chat formatting goes through the tokenizer's own chat template in `encode_prompts`. A synthetic task
(the tiny world's `arith` and `translate`) is a module listed in `TASKS` that exports `TASK`: prompts
made by code, an endless training stream and a fixed held-out split, its knobs bound from
`data.task_options`.
"""

from __future__ import annotations

import csv
import importlib
import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from selfimprove.errors import UserError
from selfimprove.options import bind

TASKS = {"arith": "selfimprove.tiny.arith", "translate": "selfimprove.tiny.translate"}


@dataclass
class Example:
    id: str
    prompt: list[dict]  # chat messages
    answer: str | None
    task: str
    columns: dict = field(default_factory=dict)  # the row's other columns by name (TRL rewards receive them)
    prompt_text: str | None = None  # the prompt as given in standard (plain text) format; None: conversational


@dataclass(frozen=True)
class Task:
    """A synthetic task: `train(options, n, seed, system_prompt)` is n training examples (an endless
    stream), `heldout(options, system_prompt)` the fixed held-out split (with references)."""

    name: str
    Options: type
    train: Callable[..., list[Example]]
    heldout: Callable[..., list[Example]]
    check: Callable[[object], list[str]] = lambda options: []
    stream: Callable[..., Iterator[Example]] | None = None  # (options, seed, system_prompt): the endless stream


class Prompts:
    """The training prompts, indexed by global position: a finite list cycled (user data, shuffled once), or
    a synthetic task's endless stream realised on demand, so a large train.steps costs nothing up front."""

    def __init__(self, items: list[Example] | None = None, stream: Iterator[Example] | None = None):
        self.items = items if items is not None else []
        self.stream = stream

    def __getitem__(self, i: int) -> Example:
        if self.stream is None:
            return self.items[i % len(self.items)]
        self.items.extend(itertools.islice(self.stream, max(0, i + 1 - len(self.items))))
        return self.items[i]

    def first(self, n: int) -> list[Example]:
        """Up to the first n prompts (the whole list, or n drawn from the stream)."""
        if self.stream is not None and n:
            self[n - 1]
        return self.items[:n]


def get_task(source: str) -> Task | None:
    """The synthetic task named by `source` ("arith", "arith:heldout"), or None for files and datasets."""
    name = source.removesuffix(":heldout")
    if name not in TASKS:
        return None
    return importlib.import_module(TASKS[name]).TASK


def task_options(task: Task, raw: dict):
    options = bind(task.Options, raw, "data.task_options")
    for err in task.check(options):
        raise UserError(err)
    return options


# --------------------------------------------------------------------------- files and datasets


def read_rows(source: str, split: str) -> list[dict]:
    """Rows of a data file, a saved datasets folder or (online) a hub dataset `hf:NAME`; every way a file
    can be unreadable (missing, not UTF-8, torn JSON, a corrupt Parquet file, a folder that is not a saved
    dataset, rows that are not objects) is one line naming the file (and the row)."""
    if source.startswith("hf:"):
        name = source[3:]
        try:
            return list(datasets.load_dataset(name, split=split))
        except Exception as e:  # offline, or no such dataset: one line, not a traceback
            raise UserError(f"data: cannot load Hugging Face dataset '{name}' split '{split}': "
                            f"{' '.join(str(e).split())[:200]}") from None
    path = Path(source)
    if not path.exists():
        raise UserError(f"data: file not found: {source}")
    try:
        rows = _read(path, split)
    except UnicodeDecodeError as e:
        raise UserError(f"data: {source} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UserError(f"data: cannot read {source}: {e.strerror or e}") from None
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise UserError(f"data: {source} row {i} is not an object with named fields (got {type(row).__name__})")
    return rows


def _read(path: Path, split: str) -> list:
    source, suffix = str(path), path.suffix.lower()
    if path.is_dir():
        try:
            ds = datasets.load_from_disk(source)
        except Exception:  # not a save_to_disk folder (datasets raises FileNotFoundError and others)
            raise UserError(f"data: {source} is a folder but not a saved dataset (datasets' save_to_disk)") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise UserError(f"data: {source} has no split '{split}' (splits: {', '.join(ds)})")
            ds = ds[split]
        return list(ds)
    if suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        if suffix == ".json" and text.lstrip().startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as e:
                raise UserError(f"data: {source} is not valid JSON (line {e.lineno}: {e.msg})") from None
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
            try:
                return list(csv.DictReader(f))
            except csv.Error as e:
                raise UserError(f"data: {source} is not valid CSV ({e})") from None
    if suffix == ".parquet":
        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"data: {source} is not a readable Parquet file ({' '.join(str(e).split())[:160]})") from None
    raise UserError(f"data: unsupported file type '{suffix}' for {source} (jsonl, json, csv, parquet, a datasets folder)")


def _messages(prompt, source: str, i: int, column: str) -> list[dict]:
    """The chat messages of a prompt cell: text becomes one user message; a list must hold messages with
    a string role and string content."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise UserError(f"data: {source} row {i}: '{column}' must be text or a non-empty list of chat messages")
    for k, m in enumerate(prompt, 1):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise UserError(f"data: {source} row {i}: message {k} of '{column}' needs a string 'role' and a string "
                            "'content'")
    return [dict(m) for m in prompt]


PLAIN = (str, int, float, bool, type(None), list, dict)  # columns kept on traces (JSON); images and bytes stay out


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
        msgs = _messages(row[cfg.prompt_column], source, i + 1, cfg.prompt_column)
        if cfg.system_prompt and msgs[0].get("role") != "system":
            msgs = [{"role": "system", "content": cfg.system_prompt}] + msgs
        answer = _answer(row, cfg.answer_column, source, i + 1) if cfg.answer_column else None
        prompt = row[cfg.prompt_column]
        out.append(Example(id=str(row.get("id", f"{task}-{i}")), prompt=msgs,
                           answer=None if answer is None else str(answer), task=str(row.get("task", task)),
                           columns={k: v for k, v in row.items() if k != cfg.prompt_column and isinstance(v, PLAIN)},
                           prompt_text=prompt if isinstance(prompt, str) else None))
    return out


def _answer(row: dict, column: str, source: str, i: int):
    """The reference answer: a column, or a dotted path into nested fields (verl's `reward_model.ground_truth`).
    It must be a scalar: a mapping or list printed as text would make every reward silently 0."""
    value, path = row, column.split(".") if column not in row else [column]
    for k, key in enumerate(path):
        if not isinstance(value, dict) or key not in value:
            where = ".".join(path[:k]) or "the row"
            keys = ", ".join(map(str, value)) if isinstance(value, dict) else type(value).__name__
            raise UserError(f"data: {source} row {i} has no answer column '{column}' ({where} has: {keys}); set "
                            "data.answer_column (a column or a dotted path; null for prompts without answers)")
        value = value[key]
    if isinstance(value, (dict, list)):
        raise UserError(f"data: {source} row {i}: data.answer_column '{column}' holds a {type(value).__name__}, not a "
                        f"single answer; name the field inside it (e.g. '{column}.ground_truth')")
    return value


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
    except UnicodeDecodeError as e:
        raise UserError(f"{what}: {path} is not UTF-8 text (byte {e.start})") from None
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


def training_prompts(source: str, cfg, split: str, seed: int, n: int) -> Prompts:
    """The training prompts: a synthetic task's endless stream (drawn as training goes), or a file's rows
    shuffled once with `seed` and cycled (`n`: the prompts a task without a stream makes up front)."""
    task = get_task(source)
    if task is not None and task.stream is not None and split == "train" and not source.endswith(":heldout"):
        return Prompts(stream=task.stream(task_options(task, cfg.task_options), seed, cfg.system_prompt))
    items = load_examples(source, cfg, split, n_train=n, seed=seed)
    random.Random(seed).shuffle(items)
    return Prompts(items)


def load_examples(source: str, cfg, split: str, n_train: int = 0, seed: int = 0) -> list[Example]:
    """Examples of a source: a synthetic task (its training stream of n_train on the train split, else
    its held-out split; "NAME:heldout" is always the held-out one), or a file or dataset."""
    task = get_task(source)
    if task is not None:
        options = task_options(task, cfg.task_options)
        if split == "train" and not source.endswith(":heldout"):
            return task.train(options, n_train, seed, cfg.system_prompt)
        return task.heldout(options, cfg.system_prompt)
    return rows_to_examples(read_rows(source, split), source, cfg)


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


def check_lengths(tokenizer, ctx_len: int, max_prompt_tokens: int, checks) -> None:
    """A prompt plus its completion must fit the model's context, checked before any work. `checks`:
    (examples, new tokens, the key that sets them, extra prompt tokens (e.g. a second turn's))."""
    for examples, new, key, extra in checks:
        ids = encode_prompts(tokenizer, examples, max_prompt_tokens)
        longest = max((len(x) for x in ids), default=0)
        if ids and longest + extra + new > ctx_len:
            plus = f" + {extra} tokens of the later turns" if extra else ""
            raise UserError(f"data: a prompt of {longest} tokens{plus} + {key}={new} exceeds the model's context "
                            f"of {ctx_len} tokens")
