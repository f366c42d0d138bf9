"""Recipe sections: typed dataclasses, at most two levels deep (`section.key`).

Every YAML key maps 1:1 to a field declared here (or in the algorithm's or program's own `Config`);
binding and the `key=value` dialect are `selfimprove.options`, reading a recipe file is
`selfimprove.recipe.load_recipe`. Defaults are those of a real model and dataset; the embedded tiny
world (`selfimprove.tiny`) names its own values in its recipes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from huggingface_hub.utils import HFValidationError, validate_repo_id

from selfimprove.errors import UserError
from selfimprove.options import opt


@dataclass
class ModelConfig:
    path: str = opt("Qwen/Qwen2.5-0.5B-Instruct", "a Hugging Face model name, a local HF folder, or a named "
                    "model of the tiny world (tiny, tiny-correct, tiny-translate)")
    dtype: str = opt("float32", "float32 | bfloat16 | float16 (16-bit: mixed precision over fp32 master weights)")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass (less memory)")
    lora_r: int = opt(0, "> 0: train LoRA adapters of this rank (PEFT); the reference is the adapters-off model")
    lora_alpha: int = opt(16, "LoRA alpha")
    lora_dropout: float = opt(0.0, "LoRA dropout")
    lora_target: str = opt("all-linear", "PEFT target_modules: all-linear or comma-separated module names")
    quantize: str = opt("none", "none | 4bit | 8bit: QLoRA, the frozen base in bitsandbytes NF4/int8 (lora_r, CUDA)")
    attn_implementation: str | None = opt(None, "eager | sdpa | flash_attention_2 | flash_attention_3 | flex_attention "
                                          "| a Hub kernel (org/repo) (null: transformers' choice)")
    revision: str | None = opt(None, "a Hub branch, tag or commit of model.path (policy, tokenizer and reference)")
    trust_remote_code: bool = opt(False, "run the Python code of the model's repository (custom architectures): "
                                  "only for repositories you trust")


@dataclass
class DataConfig:
    train: str = opt("", "a .jsonl/.json/.csv/.parquet file or glob, a folder (a Hub dataset snapshot or a "
                     "save_to_disk folder), hf:NAME, or a synthetic task (arith, translate)")
    eval: str | None = opt(None, "held-out prompts (same forms); null: the synthetic task's held-out split")
    train_split: str = opt("train", "split name of data.train (hf:, Hub snapshot folders, saved datasets)")
    config: str | None = opt(None, "dataset configuration (subset) of hf: sources and Hub snapshot folders, e.g. "
                             "GSM8K's main")
    revision: str | None = opt(None, "hf: sources: the dataset revision (branch, tag or commit)")
    eval_split: str = opt("test", "split name of data.eval")
    prompt_column: str = opt("prompt", "column with the prompt: text or a list of chat messages")
    prompt_template: str | None = opt(None, "build the user message from the row's columns, e.g. "
                                      "'Translate to {lang}: {source}' (prompt_column unused)")
    source_column: str | None = opt(None, "column with the bare text to translate/score (trace.source; comet_kiwi's "
                                    "src, TRL rewards' `source`), read before prompt_template fills the prompt; "
                                    "null: none")
    answer_column: str | None = opt("answer", "column with the reference answer, or a dotted path into nested "
                                    "fields (verl: reward_model.ground_truth); null: prompts without answers")
    system_prompt: str | None = opt(None, "a system message put before every prompt")
    apply_chat_template: bool | str = opt("auto", "auto: chat messages through the chat template, plain-text prompts as "
                                   "they are (TRL's standard format) | true: text becomes a user message | false: "
                                   "text prompts only, never templated")
    chat_template: str | None = opt(None, "a Jinja chat template (text, or a .jinja file) instead of the tokenizer's")
    chat_template_kwargs: dict = opt({}, "extra variables for the chat template, e.g. {enable_thinking: false}")
    max_prompt_tokens: int = opt(512, "a longer prompt is an error, not a silent truncation")
    task_options: dict = opt({}, "options of a synthetic task (arith: ops, min_operand, max_operand, ...)")


@dataclass
class GenerationConfig:
    backend: str = opt("hf", "hf | vllm (one engine in each training process) | vllm-server (other GPUs)")
    n: int = opt(8, "samples per prompt (one group)")
    temperature: float = opt(1.0, "sampling temperature (0: greedy)")
    top_p: float = opt(1.0, "nucleus sampling")
    top_k: int = opt(0, "sample among the k most likely tokens (0 or -1: off)")
    min_p: float = opt(0.0, "drop tokens below min_p x the top token's probability (0: off)")
    repetition_penalty: float = opt(1.0, "> 1 discourages tokens of the prompt and the completion so far (1: off)")
    stop: list[str] = opt([], "strings that end a completion (finish_reason stop); the stop string stays in it")
    max_new_tokens: int = opt(256, "tokens sampled per completion at most")
    batch_size: int = opt(512, "sequences per generate call (hf)")
    mismatch_correction: str = opt("none", "none | is | tis: weight each token by pi_trainer/pi_engine "
                                   "(vllm backends), capped at mismatch_cap for tis")
    mismatch_cap: float = opt(2.0, "cap of the truncated importance weight (tis)")
    max_staleness: int = opt(0, "asynchronous rollout: 0 samples each step with the current weights; k > 0 samples "
                             "step s+1 while step s trains (hf: on a copy of the model; vllm-server), the engine "
                             "receiving the weights every k steps: a trained batch is at most k updates old")
    gpu_memory_utilization: float = opt(0.3, "vllm: the engine's share of each GPU")
    sleep: bool = opt(True, "vllm: free the engine's weights and KV cache during the update (GPU only)")
    weight_bucket_mb: int = opt(512, "vllm: the weight push sends buckets of about this size")
    max_model_len: int = opt(0, "vllm: context length (0: the model's)")
    server_url: str = opt("http://127.0.0.1:8000", "vllm-server: the server's URL")
    server_timeout: float = opt(600.0, "vllm-server: seconds for any one call before a clear error")
    server_connect_timeout: float = opt(240.0, "vllm-server: seconds to wait for the server to come up")
    server_group_port: int = opt(51216, "vllm-server: NCCL rendezvous port of the weight push")


@dataclass
class RewardSpec:
    fn: str = opt(help="a name in reward.REWARDS or 'package.module:function'")
    weight: float = opt(1.0, "weight in the combined reward")
    name: str | None = opt(None, "key in trace.rewards (default: fn)")
    kwargs: dict = opt({}, "options bound to the function (factory: true: passed to the factory once)")
    factory: bool = opt(False, "fn builds the reward: fn(**kwargs) returns the reward function (e.g. "
                        "trl.rewards:get_soft_overlong_punishment)")


@dataclass
class OptimConfig:
    """The optimizer fields every `train:` section shares (on-policy `TrainConfig`, programs' `FitConfig`)."""

    micro_batch_size: int = opt(64, "sequences per forward/backward (gradient accumulation)")
    lr: float = opt(1e-5, "peak learning rate")
    lr_schedule: str = opt("constant", "constant | linear | cosine (after warmup) | infinite (on-policy recipes: "
                           "warm-up, cool-down, constant, annealing; see lr_cooldown_steps)")
    warmup_steps: int = opt(0, "optimizer steps of linear warm-up")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    adam_beta1: float = opt(0.9, "AdamW beta1")
    adam_beta2: float = opt(0.999, "AdamW beta2")
    max_grad_norm: float = opt(1.0, "gradient clipping norm")
    max_seconds: float = opt(0.0, "> 0: stop training after this many seconds (a time budget)")
    threads: int = opt(0, "torch threads per process (0: torch's default)")


@dataclass
class TrainConfig(OptimConfig):
    steps: int = opt(100, "rollout steps")
    prompts_per_step: int = opt(8, "prompts per step, over all processes")
    mini_batches: int = opt(1, "optimizer steps per rollout step (NFT paper: 16)")
    micro_batch_tokens: int = opt(0, "> 0: micro-batches of at most this many tokens (as the forward sees them: "
                                  "summed lengths packed, count x longest padded) instead of micro_batch_size "
                                  "sequences; a longer sequence runs alone")
    packing: bool | str = opt(False, "auto | true | false: run each micro-batch's sequences packed into rows "
                              "without padding (same loss and gradients); auto: where a probe shows the model "
                              "can, true: an error where it cannot")
    resume: str = opt("", "auto: continue the run folder's last whole checkpoint (if any); or a checkpoint folder")
    on_nonfinite: str = opt("stop", "a non-finite loss or gradient norm: stop (keeping the last whole checkpoint) "
                            "or skip the step (counted in metrics as skipped_nonfinite)")
    lr_cooldown_steps: int = opt(0, "infinite: optimizer steps of the cosine cool-down from lr to "
                                 "lr * lr_constant_ratio, after the warm-up")
    lr_constant_ratio: float = opt(0.5, "infinite: the constant phase's rate, a fraction of lr")
    lr_anneal_steps: int = opt(0, "infinite: the run's last optimizer steps, a linear decay to lr * lr_min_ratio; "
                               "a checkpoint is saved where it starts, from which the next round continues")
    lr_min_ratio: float = opt(0.0, "infinite: the rate at the end of the annealing, a fraction of lr")
    shared_prefix: bool | str = opt("auto", "auto | true | false: the samples of a prompt run the prompt once per "
                                    "micro-batch (a row per prompt under a 4D mask; the same loss and gradients); "
                                    "auto: where a probe at setup shows the model takes it (not under DeepSpeed)")


@dataclass
class EvalConfig:
    before: bool = opt(False, "held-out accuracy before training")
    after: bool = opt(False, "held-out accuracy after training")
    every: int = opt(0, "> 0: also every k steps (the accuracy curve)")
    n: int = opt(500, "problems: the first n of the eval set")
    reward: str = opt("math_correct", "the reward that decides correctness")
    correct_threshold: float = opt(0.5, "a value of eval.reward >= this is correct")
    max_new_tokens: int = opt(256, "tokens per answer at most")
    temperature: float = opt(0.0, "0: greedy")
    repetition_penalty: float = opt(1.0, "as generation.repetition_penalty, for the evaluation's answers")
    stop: list[str] = opt([], "as generation.stop, for the evaluation's answers")
    batch_size: int = opt(512, "sequences per generate call")


# log.report_to: accelerate's trackers (accelerate.tracking) and the pip package each needs
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "comet_ml": "comet-ml",
            "mlflow": "mlflow", "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab"}


@dataclass
class LogConfig:
    out: str = opt("runs", "parent folder of run folders")
    name: str | None = opt(None, "run folder name inside log.out (default: <recipe>-<time>)")
    overwrite: bool = opt(False, "replace an existing run folder of the same name (otherwise only train.resume "
                          "continues it)")
    every: int = opt(1, "a metrics.jsonl line every k steps")
    traces_every: int = opt(10, "dump the step's traces to traces.jsonl every k steps (0: never)")
    traces_per_step: int = opt(16, "at most this many traces per dump")
    save_every: int = opt(0, "checkpoint every k steps (0: only at the end)")
    save_final: bool = opt(True, "checkpoint at the end")
    keep_last: int = opt(2, "checkpoints kept")
    progress: bool = opt(True, "progress bar")
    report_to: list[str] | str = opt([], "experiment trackers (TRL's name): a list or one of "
                                     f"{', '.join(TRACKERS)}; none or []: none")
    project: str = opt("selfimprove", "the wandb / trackio project (the run's name there is log.name's folder)")

    def __post_init__(self):
        # one name or "none" as in TRL (report_to: wandb); kept as a list from here on
        names = [self.report_to] if isinstance(self.report_to, str) else self.report_to
        self.report_to = [n for n in names if n != "none"]


@dataclass
class RunLogConfig(LogConfig):
    """The run folder of an on-policy run: LogConfig plus its final export (programs save their own outputs)."""

    merge_lora_final: bool = opt(False, "final/: merge the LoRA adapter into the base (PEFT merge_and_unload), "
                                 "a plain model instead of the adapter")
    push_to_hub: str | None = opt(None, "a Hugging Face repo (user/name): push final/ there at the end (a failed "
                                  "push is a warning; the run still succeeds)")


@dataclass
class Recipe:
    """An on-policy recipe (NFT, GRPO, RFT, SCoRe, SSR); offline programs have their own (programs/)."""

    seed: int = opt(0, "random seed")
    model: ModelConfig = opt(ModelConfig(), "the policy")
    data: DataConfig = opt(DataConfig(), "prompts")
    generation: GenerationConfig = opt(GenerationConfig(), "sampling the policy's traces")
    rewards: list[RewardSpec] = opt([RewardSpec(fn="math_correct")], "weighted reward functions")
    algorithm: Any = opt(None, "the method: {name: nft | grpo | rft | score | ssr, ...its options}")
    train: TrainConfig = opt(TrainConfig(), "optimization")
    eval: EvalConfig = opt(EvalConfig(), "held-out evaluation")
    log: RunLogConfig = opt(RunLogConfig(), "the run folder; final/ (the exported model) when log.save_final")
    source: str = opt("", "the recipe file it came from (set by load_recipe)")


# --------------------------------------------------------------------------- value checks

SEED_MAX = 2**32  # numpy's and torch's seeds are 32-bit (set_seed seeds both)


def _first(checks) -> None:
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)


def _range_ok(value, spec: str) -> bool:
    """`spec`: '>=0', '>0', '[0,1)', '(0,1]', '[1,65535]' (every numeric option is one of these)."""
    if spec[0] in "[(":
        lo, hi = (float(x) for x in spec[1:-1].split(","))
        return (value >= lo if spec[0] == "[" else value > lo) and (value <= hi if spec[-1] == "]" else value < hi)
    return value >= float(spec[2:]) if spec.startswith(">=") else value > float(spec[1:])


def check_ranges(obj, prefix: str, ranges: dict[str, str], flag: bool = False) -> None:
    """One line naming the first key out of its allowed range, e.g. 'train.lr must be > 0, got -1.0'
    (`flag`: a command-line option, shown as --max-new-tokens)."""
    for key, spec in ranges.items():
        value = getattr(obj, key)
        if flag:
            key = key.replace("_", "-")
        if not _range_ok(value, spec):
            op = ">=" if spec.startswith(">=") else ">"
            shown = f"in {spec.replace(',', ', ')}" if spec[0] in "[(" else f"{op} {spec[len(op):]}"
            raise UserError(f"{prefix}{key} must be {shown}, got {value!r}")


def check_seed(seed: int, key: str = "seed") -> None:
    if not 0 <= seed < SEED_MAX:
        raise UserError(f"{key} must be in [0, 2^32), got {seed}")


TEMPERATURE_EPS = 1e-5  # vLLM's: a lower temperature is greedy there; here logits / t would overflow to inf


def check_temperature(t: float, key: str) -> None:
    if not (t == 0 or t >= TEMPERATURE_EPS):
        raise UserError(f"{key} must be 0 (greedy) or >= {TEMPERATURE_EPS}, got {t!r}")


def check_threads(threads: int, key: str = "train.threads") -> None:
    if threads < 0:
        raise UserError(f"{key} must be >= 0 (0: torch's default), got {threads}")


def check_model(m: ModelConfig) -> None:
    _first([
        (bool(m.path), "model.path is required: a Hugging Face model name or folder"),
        (m.dtype in ("float32", "bfloat16", "float16"), f"model.dtype must be float32, bfloat16 or float16, got {m.dtype!r}"),
        (m.quantize in ("none", "4bit", "8bit"), "model.quantize must be none, 4bit or 8bit"),
        (m.revision is None or bool(m.revision.strip()), "model.revision must be a branch, tag or commit, not empty"),
    ])
    check_ranges(m, "model.", {"lora_r": ">=0", "lora_alpha": ">0", "lora_dropout": "[0,1)"})
    _first([(m.quantize == "none" or m.lora_r > 0,
             f"model.quantize={m.quantize} (QLoRA) trains LoRA adapters on the frozen quantized base: set model.lora_r")])


# apply_chat_template's own arguments (and the template's `messages`): not variables a recipe may pass
TEMPLATE_ARGS = {"conversation", "messages", "tools", "documents", "chat_template", "add_generation_prompt",
                 "continue_final_message", "tokenize", "padding", "truncation", "max_length", "return_tensors",
                 "return_dict", "return_assistant_tokens_mask", "tokenizer_kwargs"}


def check_data(d: DataConfig) -> None:
    if isinstance(d.apply_chat_template, bool):  # YAML's true/false
        d.apply_chat_template = str(d.apply_chat_template).lower()
    _first([
        (d.train is not None and (not isinstance(d.train, str) or bool(d.train)),
         "data.train is required: a data file, a datasets folder, hf:NAME or a synthetic task"),
        (d.apply_chat_template in ("auto", "true", "false"),
         f"data.apply_chat_template must be auto, true or false, got {d.apply_chat_template!r}"),
        (not (d.apply_chat_template == "false" and d.system_prompt),
         "data.system_prompt needs the chat template; it cannot be used with data.apply_chat_template=false"),
    ])
    check_ranges(d, "data.", {"max_prompt_tokens": ">=1"})
    taken = sorted(k for k in d.chat_template_kwargs if not isinstance(k, str) or not k.isidentifier()
                   or k in TEMPLATE_ARGS)
    _first([(not taken, f"data.chat_template_kwargs: {taken[0]!r} is not a template variable name (or is one of "
                        "apply_chat_template's own arguments)" if taken else "")])


def check_sampling(g, where: str = "generation") -> None:
    check_ranges(g, f"{where}.", {"n": ">=1", "top_p": "(0,1]", "max_new_tokens": ">=1", "batch_size": ">=1"})
    check_temperature(g.temperature, f"{where}.temperature")
    check_processing(g, where)


def check_processing(g, where: str) -> None:
    """The logits processing options a section has (top_k, min_p, repetition_penalty, stop)."""
    ranges = {"top_k": ">=-1", "min_p": "[0,1]", "repetition_penalty": ">0"}
    check_ranges(g, f"{where}.", {k: v for k, v in ranges.items() if hasattr(g, k)})
    for i, s in enumerate(getattr(g, "stop", [])):
        if not s:
            raise UserError(f"{where}.stop[{i}] is an empty string (every stop string needs at least one character)")


def check_generation(g: GenerationConfig) -> None:
    check_sampling(g)
    _first([
        (g.backend in ("hf", "vllm", "vllm-server"), f"generation.backend '{g.backend}' is not one of hf, vllm, vllm-server"),
        (g.mismatch_correction in ("none", "is", "tis"), "generation.mismatch_correction must be none, is or tis"),
    ])
    check_ranges(g, "generation.", {"mismatch_cap": ">=1", "gpu_memory_utilization": "(0,1]", "weight_bucket_mb": ">=1",
                                    "max_model_len": ">=0", "server_timeout": ">0", "server_connect_timeout": ">=0",
                                    "server_group_port": "[1,65535]", "max_staleness": ">=0"})
    if g.max_staleness and g.backend == "vllm":
        raise UserError("generation.max_staleness > 0 needs an engine of its own while the update runs: "
                        "backend hf (a copy of the model) or vllm-server, not the colocated vllm (it sleeps during "
                        "the update)")


def check_optim(t: OptimConfig) -> None:
    infinite = hasattr(t, "lr_anneal_steps")  # the on-policy TrainConfig: rounds continue its constant phase
    names = "constant, linear, cosine or infinite" if infinite else "constant, linear or cosine"
    _first([(t.lr_schedule in ("constant", "linear", "cosine") or (infinite and t.lr_schedule == "infinite"),
             f"train.lr_schedule must be {names}, got {t.lr_schedule!r}")])
    # beta = 1 never forgets (Adam's bias correction divides by 0); max_grad_norm <= 0 would flip or zero the gradient
    check_ranges(t, "train.", {"micro_batch_size": ">=1", "lr": ">0", "warmup_steps": ">=0", "weight_decay": ">=0",
                               "adam_beta1": "[0,1)", "adam_beta2": "[0,1)", "max_grad_norm": ">0",
                               "max_seconds": ">=0"})
    check_threads(t.threads)


def check_log(log: LogConfig) -> None:
    check_ranges(log, "log.", {"every": ">=1", "traces_every": ">=0", "traces_per_step": ">=0", "save_every": ">=0",
                               "keep_last": ">=1"})
    check_run_name(log.name)
    for name in log.report_to:
        if name not in TRACKERS:
            raise UserError(f"log.report_to: unknown tracker {name!r}; accepted: {', '.join(TRACKERS)} (or none)")
    if not log.project:
        raise UserError("log.project must not be empty")


def check_run_name(name: str | None) -> None:
    """log.name is one plain folder name inside log.out: never a path that could reach another folder."""
    if name is None:
        return
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        raise UserError(f"log.name must be a plain folder name inside log.out (no '/', not starting with '.'), "
                        f"got {name!r}")


def validate(recipe: Recipe) -> None:
    """Value checks of an on-policy recipe that types alone do not catch."""
    t, g, e = recipe.train, recipe.generation, recipe.eval
    check_seed(recipe.seed)
    check_model(recipe.model)
    check_data(recipe.data)
    check_generation(g)
    check_log(recipe.log)
    check_optim(t)
    check_ranges(t, "train.", {"steps": ">=0", "prompts_per_step": ">=1", "mini_batches": ">=1"})
    check_ranges(t, "train.", {"micro_batch_tokens": ">=0"})
    if isinstance(t.shared_prefix, bool):  # YAML's true/false
        t.shared_prefix = str(t.shared_prefix).lower()
    _first([(t.on_nonfinite in ("stop", "skip"), f"train.on_nonfinite must be stop or skip, got {t.on_nonfinite!r}"),
            (str(t.packing).lower() in ("auto", "true", "false"), f"train.packing must be auto, true or false, got {t.packing!r}"),
            (t.shared_prefix in ("auto", "true", "false"),
             f"train.shared_prefix must be auto, true or false, got {t.shared_prefix!r}"),
            (len(recipe.rewards) >= 1, "rewards: at least one reward is needed")])
    check_ranges(e, "eval.", {"n": ">=1", "max_new_tokens": ">=1", "every": ">=0", "batch_size": ">=1"})
    check_temperature(e.temperature, "eval.temperature")
    check_processing(e, "eval")
    if t.prompts_per_step * g.n < t.mini_batches:
        raise UserError("train.mini_batches is larger than the number of samples per step")
    check_infinite(t)
    check_final(recipe.log, recipe.model)


def check_infinite(t: TrainConfig) -> None:
    """The infinite schedule's phases: they must fit the run, and the annealing must start at a rollout step
    (its checkpoint is where the next round continues)."""
    check_ranges(t, "train.", {"lr_cooldown_steps": ">=0", "lr_constant_ratio": "(0,1]", "lr_anneal_steps": ">=0",
                               "lr_min_ratio": "[0,1]"})
    if t.lr_schedule != "infinite":
        return
    total = t.steps * t.mini_batches
    _first([
        (t.warmup_steps + t.lr_cooldown_steps + t.lr_anneal_steps <= total,
         f"train.lr_schedule=infinite: warmup_steps + lr_cooldown_steps + lr_anneal_steps = "
         f"{t.warmup_steps + t.lr_cooldown_steps + t.lr_anneal_steps} optimizer steps exceed the run's {total}"),
        (t.lr_anneal_steps % t.mini_batches == 0,
         f"train.lr_anneal_steps={t.lr_anneal_steps} must be a multiple of train.mini_batches={t.mini_batches} "
         "(the annealing starts at a rollout step)"),
        (t.lr_min_ratio <= t.lr_constant_ratio, "train.lr_min_ratio must be <= train.lr_constant_ratio"),
    ])


def check_final(log: RunLogConfig, m: ModelConfig) -> None:
    """The final export's options: they act on final/, which only log.save_final writes."""
    for key, on in (("merge_lora_final", log.merge_lora_final), ("push_to_hub", log.push_to_hub)):
        if on and not log.save_final:
            raise UserError(f"log.{key} acts on final/, which log.save_final=false does not write")
    if log.merge_lora_final and not m.lora_r:
        raise UserError("log.merge_lora_final merges a LoRA adapter: set model.lora_r (or drop it)")
    if log.push_to_hub:
        check_repo(log.push_to_hub, "log.push_to_hub")


def check_repo(repo: str, key: str) -> None:
    """A Hugging Face model repo id (user/name), by huggingface_hub's own rules."""
    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise UserError(f"{key}: '{repo}' is not a Hugging Face repo id (user/name): {str(e).splitlines()[0]}") from None
