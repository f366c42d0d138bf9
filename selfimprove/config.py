"""Recipes: YAML -> typed dataclasses, at most two levels deep, `section.key=value` overrides.

Every YAML key maps 1:1 to a dataclass field; an unknown key or a value of the wrong type is a
`UserError` naming the key (and suggesting the closest valid one). The algorithm section is
owned by the algorithm module: `algorithm: {name: nft, ...}` is bound to `nft.Config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selfimprove.errors import UserError


@dataclass
class ModelConfig:
    path: str = "tiny"  # "tiny" = the embedded model (built and cached on first use), else an HF path/name
    dtype: str = "float32"  # float32 | bfloat16 | float16
    gradient_checkpointing: bool = False
    lora_r: int = 0  # > 0: train LoRA adapters (PEFT); the reference policy is then the adapters-off model
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target: str = "all-linear"  # PEFT target_modules: "all-linear" or comma-separated module names
    quantize: str = "none"  # none | 4bit | 8bit: QLoRA, the frozen base in bitsandbytes NF4/int8 (needs lora_r, CUDA)


@dataclass
class DataConfig:
    train: str = "arith"  # a synthetic task name (arith), a .jsonl/.json/.csv/.parquet file, a saved
    #                       datasets folder, or hf:NAME (a hub dataset, when online)
    eval: str | None = None  # None: the synthetic task's fixed held-out split (or no eval for files)
    train_split: str = "train"  # split name for hf: / saved datasets
    eval_split: str = "test"
    prompt_column: str = "prompt"
    prompt_template: str | None = None  # e.g. "Translate the following text to {target_language}: \n{source}":
    #                                     the user message is built from the row's columns (prompt_column unused)
    answer_column: str | None = "answer"  # null: prompts without reference answers
    system_prompt: str | None = None
    max_prompt_tokens: int = 512  # a longer prompt is an error, not a silent truncation
    # knobs of the synthetic arith task: a (op) b with a in [min_operand, max_operand];
    # for "*" the second operand is in [2, max_multiplier]
    ops: str = "+-*"
    min_operand: int = 10
    max_operand: int = 99
    max_multiplier: int = 9
    n_heldout: int = 500  # size of the fixed held-out split (seeded by heldout_seed, never trained on)
    heldout_seed: int = 1234


@dataclass
class GenerationConfig:
    backend: str = "hf"  # hf | vllm (colocated, one engine per process) | vllm-server (other GPUs)
    n: int = 8  # samples per prompt = one group
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 16
    batch_size: int = 512  # sequences per generate call (hf)
    # engine/trainer mismatch (vllm backends): none | is | tis. With is/tis the trainer recomputes the
    # old log-probs and every token's loss is weighted by pi_trainer/pi_engine, capped at mismatch_cap for tis
    mismatch_correction: str = "none"
    mismatch_cap: float = 2.0
    # vllm (colocated)
    gpu_memory_utilization: float = 0.3  # the engine's share of each GPU; the trainer keeps the rest
    sleep: bool = True  # free the engine's weights and KV cache during the update (GPU only)
    weight_bucket_mb: int = 512  # the weight push sends buckets of about this size, not one call per tensor
    max_model_len: int = 0  # 0: the model's context length
    # vllm-server: a `trl vllm-serve` / `vllm serve` server on other GPUs
    server_url: str = "http://127.0.0.1:8000"
    server_timeout: float = 600.0  # seconds for any one call (generate, weight push) before a clear error
    server_connect_timeout: float = 240.0  # seconds to wait for the server to come up
    server_group_port: int = 51216  # NCCL rendezvous port of the weight push


@dataclass
class RewardSpec:
    fn: str  # a name in reward.REWARDS or "package.module:function"
    weight: float = 1.0
    name: str | None = None  # key in trace.rewards (default: fn)
    kwargs: dict = field(default_factory=dict)  # bound with functools.partial


@dataclass
class TrainConfig:
    steps: int = 100  # rollout steps
    prompts_per_step: int = 8  # global, over all processes
    mini_batches: int = 1  # optimizer steps per rollout (NFT paper: 16)
    micro_batch_size: int = 64  # sequences per forward/backward (gradient accumulation inside a mini-batch)
    lr: float = 1e-5
    lr_schedule: str = "constant"  # constant | linear | cosine (after warmup)
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    max_seconds: float = 0.0  # > 0: stop training after this many seconds (a time budget)
    threads: int = 0  # torch threads per process; 0 = leave torch's default
    resume: str = ""  # "auto": continue from the run folder's last whole checkpoint (if any); or a checkpoint folder


@dataclass
class EvalConfig:
    before: bool = False  # held-out accuracy before training
    after: bool = False  # ... and after
    every: int = 0  # > 0: also every k steps (accuracy curve)
    n: int = 500  # problems (the first n of the eval set)
    reward: str = "math_correct"  # the reward whose value >= 0.5 counts as correct
    max_new_tokens: int = 16
    temperature: float = 0.0  # 0 = greedy
    batch_size: int = 512


@dataclass
class LogConfig:
    out: str = "runs"  # parent folder of run folders
    name: str | None = None  # run folder name (default: <recipe>-<time>)
    every: int = 1  # metrics.jsonl line every k steps
    traces_every: int = 10  # dump the step's traces to traces.jsonl every k steps
    traces_per_step: int = 16  # at most this many traces per dump
    save_every: int = 0  # checkpoint every k steps (0: only at the end)
    save_final: bool = True
    keep_last: int = 2  # checkpoints kept
    progress: bool = True  # progress bar


@dataclass
class Recipe:
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec(fn="math_correct")])
    algorithm: Any = None  # the algorithm module's Config dataclass (has a `name` field)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: str = ""  # the recipe file it came from (set by load_recipe)


# --------------------------------------------------------------------------- binding


def _closest(key: str, options) -> str:
    near = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5) or sorted(
        (o for o in options if key.startswith(o) or o.startswith(key)), key=len, reverse=True)
    return f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(sorted(options))}"


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value, tp, where: str):
    """Check (and gently convert: int -> float) `value` against the annotation `tp`."""
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
        raise UserError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
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


def bind(cls, raw, where: str):
    """Build dataclass `cls` from a mapping; unknown keys and wrong types are UserErrors."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in raw.items():
        full = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise UserError(f"unknown key '{full}'{_closest(str(key), names)}")
        kwargs[key] = coerce(value, hints[key], full)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise UserError(f"{where}: {e}") from None


def _bind_recipe(raw: dict, source: str) -> Recipe:
    from selfimprove.algorithms import get_algorithm

    raw = dict(raw)
    algo_raw = raw.pop("algorithm", None) or {"name": "nft"}
    if isinstance(algo_raw, str):  # `algorithm: grpo` is the name alone
        algo_raw = {"name": algo_raw}
    if not isinstance(algo_raw, dict):
        raise UserError(f"algorithm: expected a mapping (algorithm: {{name: nft, ...}}), got {algo_raw!r}")
    algo_raw = dict(algo_raw)
    if "name" not in algo_raw:
        raise UserError(f"{source}: the algorithm section needs a 'name' (e.g. algorithm: {{name: nft}})")
    algo = get_algorithm(algo_raw["name"])
    recipe = bind(Recipe, {k: v for k, v in raw.items() if k != "source"}, "")
    recipe.algorithm = bind(algo.Config, algo_raw, "algorithm")
    recipe.source = source
    validate(recipe)
    for err in algo.check(recipe.algorithm):
        raise UserError(err)
    return recipe


def validate(recipe: Recipe) -> None:
    """Value checks that types alone do not catch."""
    t, g = recipe.train, recipe.generation
    checks = [
        (t.steps >= 0, "train.steps must be >= 0"),
        (t.prompts_per_step >= 1, "train.prompts_per_step must be >= 1"),
        (t.mini_batches >= 1, "train.mini_batches must be >= 1"),
        (t.micro_batch_size >= 1, "train.micro_batch_size must be >= 1"),
        (t.lr > 0, "train.lr must be > 0"),
        (t.lr_schedule in ("constant", "linear", "cosine"), "train.lr_schedule must be constant, linear or cosine"),
        (g.n >= 1, "generation.n must be >= 1"),
        (g.temperature >= 0, "generation.temperature must be >= 0"),
        (0 < g.top_p <= 1, "generation.top_p must be in (0, 1]"),
        (g.max_new_tokens >= 1, "generation.max_new_tokens must be >= 1"),
        (g.backend in ("hf", "vllm", "vllm-server"), f"generation.backend '{g.backend}' is not one of hf, vllm, vllm-server"),
        (g.mismatch_correction in ("none", "is", "tis"), "generation.mismatch_correction must be none, is or tis"),
        (g.mismatch_cap >= 1, "generation.mismatch_cap must be >= 1"),
        (0 < g.gpu_memory_utilization <= 1, "generation.gpu_memory_utilization must be in (0, 1]"),
        (g.weight_bucket_mb >= 1 and g.max_model_len >= 0, "generation.weight_bucket_mb must be >= 1 and max_model_len >= 0"),
        (g.server_timeout > 0 and g.server_connect_timeout >= 0, "generation.server_timeout must be > 0"),
        (recipe.model.dtype in ("float32", "bfloat16", "float16"), "model.dtype must be float32, bfloat16 or float16"),
        (len(recipe.rewards) >= 1, "rewards: at least one reward is needed"),
        (recipe.eval.n >= 1, "eval.n must be >= 1"),
        (recipe.eval.temperature >= 0, "eval.temperature must be >= 0"),
        (recipe.eval.max_new_tokens >= 1, "eval.max_new_tokens must be >= 1"),
        (recipe.eval.every >= 0, "eval.every must be >= 0"),
        (recipe.log.every >= 1, "log.every must be >= 1"),
        (recipe.log.keep_last >= 1, "log.keep_last must be >= 1"),
        (recipe.log.traces_every >= 0 and recipe.log.save_every >= 0, "log.traces_every and log.save_every must be >= 0"),
        (t.threads >= 0, "train.threads must be >= 0"),
        (recipe.model.lora_r >= 0 and recipe.model.lora_alpha > 0, "model.lora_r must be >= 0 and model.lora_alpha > 0"),
        (recipe.model.quantize in ("none", "4bit", "8bit"), "model.quantize must be none, 4bit or 8bit"),
        (recipe.model.quantize == "none" or recipe.model.lora_r > 0,
         f"model.quantize={recipe.model.quantize} (QLoRA) trains LoRA adapters on the frozen quantized base: set model.lora_r"),
        (t.max_seconds >= 0 and t.warmup_steps >= 0, "train.max_seconds and train.warmup_steps must be >= 0"),
        (bool(recipe.data.ops) and set(recipe.data.ops) <= set("+-*"), "data.ops must be a non-empty mix of + - *"),
        (1 <= recipe.data.min_operand <= recipe.data.max_operand, "data.min_operand must be >= 1 and <= data.max_operand"),
        (recipe.data.max_multiplier >= 2, "data.max_multiplier must be >= 2"),
        (recipe.data.n_heldout >= 1 and recipe.data.max_prompt_tokens >= 1, "data.n_heldout and data.max_prompt_tokens must be >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    if t.prompts_per_step * g.n < t.mini_batches:
        raise UserError("train.mini_batches is larger than the number of samples per step")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`key=value` and `section.key=value`; values are parsed as YAML (so 1e-4, true, [a, b] work)."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' is not of the form key=value or section.key=value")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        parts = key.strip().split(".")
        if len(parts) == 1:
            raw[parts[0]] = value
        elif len(parts) == 2:
            section = raw.setdefault(parts[0], {})
            if not isinstance(section, dict):
                raise UserError(f"override '{key}': '{parts[0]}' is not a section")
            section[parts[1]] = value
        else:
            raise UserError(f"override '{key}': recipes are at most two levels deep (section.key)")
    return raw


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe is a mapping of sections")
    try:
        return _bind_recipe(apply_overrides(raw, overrides or []), str(path))
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def dump_yaml(recipe: Recipe, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))
