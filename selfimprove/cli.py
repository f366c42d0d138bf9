"""`selfimprove CMD ...`: one dialect for every subcommand (see `commands.py` for the subcommands).

    selfimprove train RECIPE.yaml [section.key=value ...]
    selfimprove eval MODEL --data arith [--n 100 | n=100] [--config FILE.yaml]
    selfimprove CMD --help                    # every option with its type, default and description

Works the same under `accelerate launch -m selfimprove ...`. A user mistake prints one line
(`error: ...`) and exits with code 2.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import typing
import warnings

import datasets
import torch
from transformers.utils import logging as hf_logging

from selfimprove.algorithms import ALGORITHMS, get_algorithm
from selfimprove.commands import COMMANDS
from selfimprove.config import Recipe
from selfimprove.errors import Interrupted, UserError
from selfimprove.options import Text, bind, closest, describe, help_table, read_yaml
from selfimprove.programs import PROGRAMS, get_program


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not torch.cuda.is_available():  # DeepSpeed (when installed) otherwise warns about it on every run
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*past_key_values.*")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars
    datasets.disable_progress_bars()  # "Map" / "Tokenizing" bars on stderr (TRL's trainers)


class HelpRequested(Exception):
    pass


KEY_VALUE = re.compile(r"([A-Za-z_][\w-]*)(\.[\w.-]*)?=")
RECIPE_KEYS = {f.name for f in dataclasses.fields(Recipe)}


def _split(argv: list[str], hints: dict, recipe_overrides: bool):
    """argv -> (flags {key: Text}, positional words, recipe overrides, --config path). `key=value` is an
    option only when `key` is one (for `train`: a recipe key, `section.key` included), so a path with
    '=' in it stays a word; for `train`, `--section.key value` is an override too."""
    flags, words, overrides, config = {}, [], [], None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            raise HelpRequested
        match = KEY_VALUE.match(arg)
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            key = key.replace("-", "_")
            if not eq and hints.get(key) is bool:  # a flag: --force
                value = "true"
            elif not eq and key.startswith("no_") and hints.get(key[3:]) is bool:  # --no-force
                key, value = key[3:], "false"
            elif not eq:
                if i + 1 >= len(argv):
                    raise UserError(f"{arg} needs a value")
                i, value = i + 1, argv[i + 1]
            if key == "config":
                config = value
            elif recipe_overrides and key != "recipe":
                overrides.append(f"{key}={value}")
            else:
                flags[key] = Text(value)
        elif match and match.group(1).replace("-", "_") == "config":
            config = arg.partition("=")[2]
        elif match and recipe_overrides and match.group(1) in RECIPE_KEYS:
            overrides.append(arg)
        elif match and not recipe_overrides and match.group(2) is None and match.group(1).replace("-", "_") in hints:
            flags[match.group(1).replace("-", "_")] = Text(arg.partition("=")[2])
        else:
            words.append(arg)
        i += 1
    return flags, words, overrides, config


def parse(cls, argv: list[str], command: str):
    """Options of `command` from argv: `--config FILE.yaml` (keys are the option names), positional words,
    then `--key value`, `--key=value` or `key=value` (dashes or underscores; later wins). Returns
    (options, overrides); for `train`, `key=value` words are the recipe's overrides and `--config` is
    the recipe."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    positional = [name for name, f in fields.items() if f.metadata.get("positional")]
    train = command == "train"
    flags, words, overrides, config = _split(argv, typing.get_type_hints(cls), train)
    if len(words) > len(positional):
        raise UserError(f"selfimprove {command}: unexpected argument '{words[len(positional)]}'")
    base = {}
    if config is not None and not config.strip():
        raise UserError("--config needs a YAML file")
    if config and train and (words or "recipe" in flags):
        raise UserError("selfimprove train: give the recipe once (RECIPE.yaml or --config RECIPE.yaml)")
    if config and train:
        base = {"recipe": config}
    elif config:
        base = {str(k).replace("-", "_"): v for k, v in read_yaml(config, "config").items()}
    for key in base:
        if key not in fields:
            raise UserError(f"{config}: unknown key '{key}'{closest(key, fields)} (the options of 'selfimprove {command}')")
    for key in flags:
        if key not in fields:
            raise UserError(f"unknown option '--{key.replace('_', '-')}'{closest(key, fields)}")
    raw = {**base, **dict(zip(positional, words)), **flags}
    for name, f in fields.items():
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in raw:
            how = "an argument" if name in positional else f"--{name.replace('_', '-')}"
            raise UserError(f"selfimprove {command} needs {name} ({how}, or '{name}:' in --config)")
    return bind(cls, raw, ""), overrides


def command_help(command: str) -> str:
    cls, _, text = COMMANDS[command]
    positional = [f.name.upper() for f in dataclasses.fields(cls) if f.metadata.get("positional")]
    words = " ".join(["selfimprove", command, *positional, "[--key value | key=value ...] [--config FILE.yaml]"])
    usage = f"usage: {words}"
    if command == "train":
        return "\n".join(["usage: selfimprove train RECIPE.yaml [section.key=value ...]", "", text, "", "options:",
                          help_table(describe(cls)), "", "recipe keys (on-policy methods):", recipe_help()])
    return "\n".join([usage, "", text, "", "options:", help_table(describe(cls))])


def recipe_help() -> str:
    """Every recipe key: the on-policy sections, each algorithm's section, each program's own sections."""
    out = [help_table([r for r in describe(Recipe) if not r[0].startswith(("algorithm", "source"))])]
    for name in ALGORITHMS:
        out.append(f"\nalgorithm (name: {name}):\n" + help_table(describe(get_algorithm(name).Config, "algorithm.")))
    for name in PROGRAMS:
        rows = [r for r in describe(get_program(name).Recipe) if r[0].split(".")[0] in ("algorithm", "generation", "train")]
        out.append(f"\nprogram {name} (model, data, log as above; its own generation, algorithm and train):\n"
                   + help_table(rows))
    return "\n".join(out)


def main_help() -> str:
    lines = ["usage: selfimprove CMD [options]   (selfimprove CMD --help: every option of CMD)", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, (_, _, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(main_help())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command '{command}' (commands: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    cls, fn, _ = COMMANDS[command]
    try:
        options, overrides = parse(cls, rest, command)
    except HelpRequested:
        print(command_help(command))
        return 0
    except UserError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    _quiet_libraries()
    try:
        return fn(options, overrides)
    except Interrupted as e:  # a run stopped by a signal after saving: the message is the resume command
        if str(e):
            print(f"error: {e}", file=sys.stderr)
        return e.code
    except UserError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside training: checkpoints on disk are whole
        print(f"error: selfimprove {command} interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # the machine, not the code: a full disk, a read-only folder
        print(f"error: cannot access {e.filename or 'a file'}: {e.strerror or e}", file=sys.stderr)
        return 2


def one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
