"""The one config dialect: typed dataclasses, YAML files, `key=value` overrides, generated `--help`.

Every recipe section and every subcommand's options is a dataclass whose fields are declared with
`opt(default, "one-line description")`. `bind` builds a dataclass from a mapping (a YAML file, the
command line): an unknown key or a value of the wrong type is a `UserError` naming the key and
suggesting the closest valid one. Values typed on the command line stay text until the field's type
is known (`Text`), so `instruction="Fix it: now"` is a string, not a YAML mapping, while `n=500`
is a number. `describe` lists the keys with type, default and description for `--help`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

import yaml

from selfimprove.errors import UserError


def opt(default: Any = MISSING, help: str = "", *, positional: bool = False) -> Any:
    """A dataclass field with its description (shown by `--help`). Lists and dicts are copied per
    instance; `positional` fields are taken from bare command-line words, in declaration order."""
    meta = {"help": help, "positional": positional}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Text:
    """A value typed on the command line, parsed once its field's type is known."""

    text: str

    def parsed(self):
        try:
            return yaml.safe_load(self.text)
        except yaml.YAMLError:
            return self.text


def plain(value):
    """A raw value with command-line text parsed as YAML (for keys read before binding, e.g. `name`)."""
    return value.parsed() if isinstance(value, Text) else value


# --------------------------------------------------------------------------- binding


# GRPOConfig's names for the common options, and where each lives in a recipe (an unknown key that is one of
# these gets this hint instead of the nearest spelling, e.g. num_generations -> generation.n, not max_new_tokens)
TRL_NAMES = {
    "num_generations": "generation.n", "learning_rate": "train.lr", "beta": "algorithm.kl_coef",
    "max_completion_length": "generation.max_new_tokens", "max_prompt_length": "data.max_prompt_tokens",
    "max_steps": "train.steps", "per_device_train_batch_size": "train.micro_batch_size",
    "lr_scheduler_type": "train.lr_schedule", "epsilon": "algorithm.clip_low", "epsilon_high": "algorithm.clip_high",
    "logging_steps": "log.every", "save_steps": "log.save_every", "output_dir": "log.out",
    "save_total_limit": "log.keep_last", "model_name_or_path": "model.path", "dataset_name": "data.train",
    "temperature": "generation.temperature", "top_p": "generation.top_p", "use_peft": "model.lora_r",
    "lora_r": "model.lora_r", "gradient_checkpointing": "model.gradient_checkpointing",
    "dataset_config": "data.config", "dataset_train_split": "data.train_split", "dataset_test_split": "data.eval_split",
    "mask_truncated_completions": "algorithm.mask_truncated", "top_k": "generation.top_k", "min_p": "generation.min_p",
    "repetition_penalty": "generation.repetition_penalty",
}


def closest(key: str, options) -> str:
    # a known key plus a suffix ("lr_rate") means that key, before any merely similar longer one ("lr_min_ratio")
    stems = sorted((o for o in options if str(key).startswith(f"{o}_")), key=len, reverse=True)
    near = stems or difflib.get_close_matches(key, list(options), n=1, cutoff=0.5) or sorted(
        (o for o in options if key.startswith(o) or o.startswith(key)), key=len, reverse=True)
    return f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(sorted(options))}"


def type_name(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _text_value(value: Text, tp):
    """Command-line text for a field of type `tp`: strings stay verbatim, everything else is YAML."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    if str in args and value.text.lstrip().startswith("[") and any(typing.get_origin(a) is list for a in args):
        return value.parsed()  # list[str] | str (log.report_to): [a, b] is the list, a lone word the string
    if str in args:
        return None if type(None) in args and value.text in ("null", "~") else value.text
    return value.parsed()


def coerce(value, tp, where: str):
    """Check (and gently convert: int -> float) `value` against the annotation `tp`."""
    if isinstance(value, Text):
        value = _text_value(value, tp)
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except UserError:
                pass
        raise UserError(f"{where}: expected {type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return {k: plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return bind(tp, value, where)
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 3e-5 (no dot) as a string; accept it as the number it is
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):  # inf/nan would silently poison every weight (issue 11)
            raise UserError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp} at {where}")


def bind(cls, raw, where: str = ""):
    """Build dataclass `cls` from a mapping; unknown keys and wrong types are UserErrors."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where or 'options'}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in raw.items():
        full = f"{where}.{key}" if where else str(key)
        if key not in names:
            section, _, name = TRL_NAMES.get(key, "").partition(".")
            trl = key in TRL_NAMES and (section != where or name in names)  # e.g. score has no kl_coef
            hint = f"; TRL's {key} is '{TRL_NAMES[key]}' here" if trl else closest(str(key), names)
            raise UserError(f"unknown key '{full}'{hint}")
        kwargs[key] = coerce(value, hints[key], full)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise UserError(f"{where or cls.__name__}: {e}") from None


# --------------------------------------------------------------------------- files and overrides


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the
    last silently: `lr` written twice would train with whichever came second)."""


def _mapping_without_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}' (line {key_node.start_mark.line + 1})",
                                                    key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def read_text(path: str | Path, what: str) -> str:
    """A text file's contents as UTF-8; missing, unreadable or not UTF-8 is one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None


def read_yaml(path: str | Path, what: str) -> dict:
    """A YAML mapping from a file; a missing file, invalid YAML or a duplicate key is one line naming it."""
    text = read_text(path, what)
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if raw is None:
        raise UserError(f"{path}: the {what} file is empty")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a {what} is a mapping of keys")
    return raw


def apply_overrides(raw: dict, overrides: list[str], depth: int = 2) -> dict:
    """`key=value` (and `section.key=value` when depth is 2); values are parsed by field type at bind."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for item in overrides:
        if "=" not in item:
            form = "key=value or section.key=value" if depth == 2 else "key=value"
            raise UserError(f"override '{item}' is not of the form {form}")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) > depth or not all(parts):
            raise UserError(f"override '{key}': keys are at most {depth} level{'s' if depth > 1 else ''} deep"
                            + (" (section.key)" if depth == 2 else ""))
        if len(parts) == 1:
            raw[parts[0]] = Text(text)
        else:
            section = raw.setdefault(parts[0], {})
            if not isinstance(section, dict):
                raise UserError(f"override '{key}': '{parts[0]}' is not a section")
            section[parts[1]] = Text(text)
    return raw


def to_plain(obj):
    """A dataclass as plain dicts and lists (for YAML and JSON). Objects given in Python (a reward function,
    a datasets.Dataset) are written as a description: config.yaml records them, it cannot rebuild them."""
    return _described(obj)


def _described(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # not asdict: it deep-copies a Dataset
        return {f.name: _described(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _described(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_described(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}:{value.__qualname__}"
    rows = getattr(value, "num_rows", None)
    return f"<{type(value).__name__}{f' of {rows} rows' if isinstance(rows, int) else ''}>"


def dump_yaml(obj, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_plain(obj), sort_keys=False))


# --------------------------------------------------------------------------- help


def commented_yaml(obj, indent: str = "") -> list[str]:
    """A dataclass instance as YAML lines, each key with its description as a comment (`selfimprove config`)."""
    lines = []
    for f in dataclasses.fields(obj):
        if not f.init or f.name == "source":
            continue
        value, text = getattr(obj, f.name), f.metadata.get("help", "")
        comment = f"  # {text}" if text else ""
        if dataclasses.is_dataclass(value):
            lines.append(f"{indent}{f.name}:{comment}")
            lines.extend(commented_yaml(value, indent + "  "))
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            lines.append(f"{indent}{f.name}:{comment}")
            for item in value:
                inner = yaml.safe_dump(to_plain(item), default_flow_style=True, width=10**6).strip()
                lines.append(f"{indent}  - {inner}")
        else:
            shown = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()
            lines.append(f"{indent}{f.name}: {shown}{comment}")
    return lines


def describe(cls, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) for every field of `cls`, sections expanded one level."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else MISSING)
        if dataclasses.is_dataclass(tp) and not prefix:
            rows.append((f.name, "section", "", f.metadata.get("help", "")))
            rows.extend(describe(tp, prefix=f"{f.name}."))
            continue
        shown = "(required)" if default is MISSING else repr(default if not dataclasses.is_dataclass(default)
                                                             else "...")
        rows.append((prefix + f.name, type_name(tp), shown, f.metadata.get("help", "")))
    return rows


def help_table(rows: list[tuple[str, str, str, str]]) -> str:
    width = max((len(r[0]) for r in rows), default=10)
    out = []
    for key, tp, default, text in rows:
        if tp == "section":
            out.append(f"\n{key}:  {text}".rstrip())
            continue
        out.append(f"  {key:<{width}}  {tp} = {default}" + (f"\n  {'':<{width}}    {text}" if text else ""))
    return "\n".join(out)
