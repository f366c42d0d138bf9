"""Prompt sets: user data from files or `datasets`, and synthetic tasks found by name.

Everything becomes a list of `Example` (an id, chat messages, a reference answer, a task name).
Chat formatting goes through the tokenizer's own chat template in `encode_prompts`. A synthetic task
(the tiny world's `arith` and `translate`) is a module listed in `TASKS` that exports `TASK`: prompts
made by code, an endless training stream and a fixed held-out split, its knobs bound from
`data.task_options`.
"""

from __future__ import annotations

import csv
import glob
import importlib
import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
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
    raw: bool = False  # prompt_text goes to the model as it is (no chat template; TRL's standard format)
    chat_kwargs: dict = field(default_factory=dict)  # data.chat_template_kwargs
    source: str | None = None  # the bare text to translate (data.source_column), without any instruction


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
    name = source.removesuffix(":heldout") if isinstance(source, str) else None
    if name not in TASKS:
        return None
    return importlib.import_module(TASKS[name]).TASK


def task_options(task: Task, raw: dict):
    options = bind(task.Options, raw, "data.task_options")
    for err in task.check(options):
        raise UserError(err)
    return options


# --------------------------------------------------------------------------- files and datasets


GLOB = set("*?[")
BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def read_rows(source, split: str, config: str | None = None, revision: str | None = None) -> list[dict]:
    """Rows of a source, every one through `datasets`: a file or a glob of files (json/jsonl/csv/parquet), a
    folder (a Hub dataset snapshot, read like the Hub reads it, or a save_to_disk folder), `hf:NAME` (the Hub,
    or its local cache offline), or a `datasets.Dataset` given in Python. Every way a source can be unreadable
    is one line naming it (and the row)."""
    datasets.disable_progress_bars()  # "Generating train split" bars for every small file: noise in a run's log
    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        ds = _pick_split(source, "the given dataset", split)
        rows, source = list(ds), "the given dataset"
    elif source.startswith("hf:"):
        rows = _load(source[3:], split, f"Hugging Face dataset '{source[3:]}'", name=config, revision=revision)
    elif GLOB & set(source):
        files = sorted(glob.glob(source, recursive=True))
        if not files:
            raise UserError(f"data: no file matches {source}")
        suffixes = {Path(f).suffix.lower() for f in files}
        if len(suffixes) > 1 or not suffixes <= set(BUILDERS):
            raise UserError(f"data: {source} matches files of types {', '.join(sorted(suffixes))}; one of "
                            f"{', '.join(BUILDERS)} is needed")
        suffix = suffixes.pop()
        rows = _load(BUILDERS[suffix], "train", source, data_files=files, **_options(suffix))
    else:
        path = Path(source)
        if not path.exists():
            raise UserError(f"data: file not found: {source}")
        rows = _read_path(path, split, config)
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise UserError(f"data: {source} row {i} is not an object with named fields (got {type(row).__name__})")
    # datasets gives a row without a column that other rows have that column as None: a null is "not given"
    return [{k: v for k, v in row.items() if v is not None} for row in rows]


def _options(suffix: str) -> dict:
    """CSV cells stay text, as written: pandas' typing would turn an answer 007 into 7, 3.10 into 3.1 and
    the text None into a null."""
    return {"dtype": str, "keep_default_na": False, "na_filter": False} if suffix == ".csv" else {}


def _load(path: str, split: str, what: str, **kwargs) -> list[dict]:
    """`datasets.load_dataset`, its failure as one line (offline, no such dataset/config/split, bad files)."""
    try:
        return list(datasets.load_dataset(path, split=split, **kwargs))
    except UserError:
        raise
    except Exception as e:  # datasets raises FileNotFoundError, ValueError, DatasetGenerationError, ...
        raise UserError(f"data: cannot load {what} split '{split}': {' '.join(str(e).split())[:240]}") from None


def _pick_split(ds, source: str, split: str):
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UserError(f"data: {source} has no split '{split}' (splits: {', '.join(ds)})")
        return ds[split]
    return ds


def _read_path(path: Path, split: str, config: str | None) -> list:
    source = str(path)
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():  # datasets' save_to_disk
            try:
                ds = datasets.load_from_disk(source)
            except Exception as e:
                raise UserError(f"data: {source} is not a readable saved dataset ({' '.join(str(e).split())[:160]})") \
                    from None
            return list(_pick_split(ds, source, split))
        if not any(p.suffix.lower() in BUILDERS for p in path.rglob("*") if p.is_file()):
            raise UserError(f"data: {source} is a folder but neither a saved dataset (datasets' save_to_disk) nor a "
                            "dataset snapshot (no .jsonl/.json/.csv/.parquet files in it)")
        return _load(source, split, source, name=config)  # a Hub snapshot: splits and configs as the Hub reads them
    suffix = path.suffix.lower()
    if suffix not in BUILDERS:
        raise UserError(f"data: unsupported file type '{suffix}' for {source} (jsonl, json, csv, parquet, a folder)")
    try:
        rows = list(datasets.load_dataset(BUILDERS[suffix], data_files=source, split="train", **_options(suffix)))
    except Exception:  # noqa: BLE001 - read again below for a message naming the line
        # datasets' Arrow reader fails on torn lines, non-object rows, or a column whose rows differ in type;
        # the plain reader names the line of the first two, and reads the third as it is
        return _read_plain(path)
    return rows if rows or suffix == ".parquet" else _read_plain(path)


def _read_plain(path: Path) -> list:
    source, suffix = str(path), path.suffix.lower()
    try:
        return _plain_rows(path, source, suffix)
    except UnicodeDecodeError as e:
        raise UserError(f"data: {source} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UserError(f"data: cannot read {source}: {e.strerror or e}") from None


def _plain_rows(path: Path, source: str, suffix: str) -> list:
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
    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"data: {source} is not a readable Parquet file ({' '.join(str(e).split())[:160]})") from None


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
    source_column = getattr(cfg, "source_column", None)
    for i, row in enumerate(rows):
        source_text = _source(row, source_column, source, i + 1) if source_column else None
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
                           prompt_text=prompt if isinstance(prompt, str) else None,
                           raw=_raw(cfg, prompt, source, i + 1), chat_kwargs=dict(cfg.chat_template_kwargs),
                           source=source_text))
    return out


def _source(row: dict, column: str, source: str, i: int) -> str:
    """The row's bare source text (data.source_column), read from the row as given: before data.prompt_template
    fills the prompt column, so a source column that is also the prompt column is still the bare text."""
    value = row.get(column)
    if not isinstance(value, str):
        got = "no such column" if value is None else f"a {type(value).__name__}"
        raise UserError(f"data: {source} row {i}: data.source_column '{column}' must hold text ({got}; columns: "
                        f"{', '.join(map(str, row))})")
    return value


def _raw(cfg, prompt, source: str, i: int) -> bool:
    """Whether a prompt goes to the model as plain text. auto (TRL's rule): text prompts are used as they are,
    chat messages go through the chat template; a prompt built by data.prompt_template or given a
    data.system_prompt is a user message, so it is templated."""
    mode = cfg.apply_chat_template
    if mode == "false" and not isinstance(prompt, str):
        raise UserError(f"data: {source} row {i}: '{cfg.prompt_column}' holds chat messages, which need the chat "
                        "template (data.apply_chat_template=false takes text prompts only)")
    return mode == "false" or (mode == "auto" and isinstance(prompt, str) and not cfg.prompt_template
                               and not cfg.system_prompt)


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
    # datasets gives a row missing a column that other rows have as None: that column is missing here too
    row = {k: v for k, v in row.items() if v is not None}
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
        kwargs = dict(_task_cfg(cfg, source).chat_template_kwargs)
        stream = task.stream(task_options(task, cfg.task_options), seed, cfg.system_prompt)
        return Prompts(stream=(replace(ex, chat_kwargs=kwargs) for ex in stream) if kwargs else stream)
    items = load_examples(source, cfg, split, n_train=n, seed=seed)
    random.Random(seed).shuffle(items)
    return Prompts(items)


def load_examples(source: str, cfg, split: str, n_train: int = 0, seed: int = 0) -> list[Example]:
    """Examples of a source: a synthetic task (its training stream of n_train on the train split, else
    its held-out split; "NAME:heldout" is always the held-out one), or a file or dataset."""
    task = get_task(source)
    if task is None:
        name = source if isinstance(source, str) else "the given dataset"
        config, revision = getattr(cfg, "config", None), getattr(cfg, "revision", None)
        return rows_to_examples(read_rows(source, split, config, revision), name, cfg)
    options = task_options(task, _task_cfg(cfg, source).task_options)
    if split == "train" and not source.endswith(":heldout"):
        return _with_kwargs(task.train(options, n_train, seed, cfg.system_prompt), cfg)
    return _with_kwargs(task.heldout(options, cfg.system_prompt), cfg)


def _task_cfg(cfg, source: str):
    if getattr(cfg, "apply_chat_template", "auto") == "false":
        raise UserError(f"data: the synthetic task '{source}' makes chat prompts; they need the chat template "
                        "(data.apply_chat_template=false takes text prompts only)")
    return cfg


def _with_kwargs(examples: list[Example], cfg) -> list[Example]:
    for ex in examples:
        ex.chat_kwargs = dict(getattr(cfg, "chat_template_kwargs", {}))
    return examples


# --------------------------------------------------------------------------- tokenisation


def render_prompt(tokenizer, ex: Example) -> str:
    """The prompt as the model sees it: plain text as it is, or the conversation through the chat template,
    opening the assistant's turn, or continuing it when the conversation ends with an assistant message (a
    prefilled reply, as TRL's apply_chat_template does)."""
    if ex.raw:
        return ex.prompt_text
    if tokenizer.chat_template is None:
        raise UserError(f"data: example '{ex.id}' is a conversation, but the tokenizer has no chat template; give "
                        "plain-text prompts (data.apply_chat_template: auto or false) or set data.chat_template")
    cont = ex.prompt[-1]["role"] == "assistant"
    return tokenizer.apply_chat_template(ex.prompt, tokenize=False, add_generation_prompt=not cont,
                                         continue_final_message=cont, **ex.chat_kwargs)


def chat_config(cfg, two_turn: bool):
    """The data config a method reads its prompts with: two-turn methods (SCoRe, self-correction evaluation)
    extend the conversation, so under `auto` their text prompts are user messages too."""
    if not two_turn or cfg.apply_chat_template == "true":
        return cfg
    if cfg.apply_chat_template == "false":
        raise UserError("data.apply_chat_template=false: two-turn episodes extend a conversation and need the chat "
                        "template")
    return replace(cfg, apply_chat_template="true")


def set_chat_template(tokenizer, template: str | None) -> None:
    """data.chat_template: Jinja text, or a file holding it, in place of the tokenizer's; it must render a
    conversation (checked here, before any work)."""
    if not template:
        return
    path = Path(template)
    if "{" not in template and path.suffix in (".jinja", ".j2", ".txt", "") and len(template) < 4096:
        try:
            template = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"data.chat_template: cannot read {path} ({getattr(e, 'strerror', None) or e})") from None
    tokenizer.chat_template = template
    try:
        tokenizer.apply_chat_template([{"role": "user", "content": "Q"}], tokenize=False, add_generation_prompt=True)
    except Exception as e:  # jinja2's TemplateSyntaxError, UndefinedError, ...: the template is the user's
        raise UserError(f"data.chat_template does not render a conversation ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:160]})") from None


def encode_prompts(tokenizer, examples: list[Example], max_prompt_tokens: int) -> list[list[int]]:
    """Prompt token ids: a templated prompt holds its special tokens already; plain text gets the tokenizer's
    own (a BOS where the model has one), as TRL tokenizes standard-format prompts."""
    ids = []
    for ex in examples:
        text = render_prompt(tokenizer, ex)
        ids.append(tokenizer(text, add_special_tokens=ex.raw)["input_ids"])
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
