"""The state of an on-policy run and its construction: everything a user can get wrong is checked in
`setup`, before anything is written (recipe values, rewards, data, model, prompt lengths, resume)."""

from __future__ import annotations

from dataclasses import dataclass, field

from accelerate.utils import set_seed

from reward import build_rewards
from selfimprove import checkpoint, prefix, trackers
from selfimprove.algorithms import Algorithm, get_algorithm
from selfimprove.data import (
    Prompts,
    chat_config,
    check_lengths,
    get_task,
    load_examples,
    require_answers,
    set_chat_template,
    training_prompts,
)
from selfimprove.distributed import configure_deepspeed, make_accelerator, set_threads, uses_deepspeed, zero_stage
from selfimprove.engines import make_engine
from selfimprove.errors import UserError
from selfimprove.export import offline
from selfimprove.hub import adapter_base
from selfimprove.optim import make_optimizer, make_scheduler
from selfimprove.packing import use_packing
from selfimprove.policy import (
    add_lora,
    context_length,
    frozen_copy,
    hub_options,
    load_model,
    load_quantized,
    load_tokenizer,
    resolve_model_path,
)
from selfimprove.runlog import RunLog


@dataclass
class State:
    recipe: object
    algo: Algorithm
    accelerator: object
    model: object
    ref_model: object
    tokenizer: object
    optimizer: object
    scheduler: object
    engine: object
    rewards: list
    train_examples: Prompts
    eval_examples: list
    run: RunLog
    step: int = 0
    history: list = field(default_factory=list)
    eval_traces: dict = field(default_factory=dict)
    eval_means: dict = field(default_factory=dict)  # tag -> {reward name: mean on the eval set}
    resume_from: object = None  # the checkpoint this run continues (train.resume), or None
    evals: list = field(default_factory=list)  # (step, accuracy) so far
    summary: dict = field(default_factory=dict)
    elapsed: float = 0.0  # training seconds before this process started (resumed runs)
    reward_idle: dict = field(default_factory=dict)  # reward name -> steps running it applied to no trace
    ahead: object = None  # asynchronous rollout (ahead.Ahead) when generation.max_staleness > 0
    data_offset: int = 0  # prompts the refill rounds of dynamic sampling took from the stream so far (dynamic.py)
    packing: bool = False  # the update's micro-batches run packed (train.packing, decided by packing.use_packing)


def _examples(recipe, eval_on: bool, two_turn: bool) -> tuple[Prompts, list]:
    """Training prompts (a stream or a cycled list) and the eval set (empty when no evaluation is asked)."""
    d = chat_config(recipe.data, two_turn)
    n_train = max(recipe.train.steps, 1) * recipe.train.prompts_per_step  # only for a task without a stream
    train_prompts = training_prompts(d.train, d, d.train_split, recipe.seed, n_train)
    if not eval_on:
        return train_prompts, []
    eval_src = d.eval or (d.train if get_task(d.train) else None)
    if eval_src is None:
        raise UserError("eval is on but data.eval is not set (a held-out file or dataset)")
    eval_examples = load_examples(eval_src, d, d.eval_split)[: recipe.eval.n]
    require_answers(eval_examples, eval_src, d.answer_column)
    return train_prompts, eval_examples


def _check_lengths(recipe, tokenizer, ctx_len: int, train_prompts: Prompts, eval_examples) -> None:
    d = recipe.data
    # synthetic tasks are uniform: a sample of prompts stands for all; user data is checked whole
    sample = train_prompts.first(2000) if get_task(d.train) else train_prompts.items
    check_lengths(tokenizer, ctx_len, d.max_prompt_tokens,
                  [(sample, recipe.generation.max_new_tokens, "generation.max_new_tokens", 0),
                   (eval_examples, recipe.eval.max_new_tokens, "eval.max_new_tokens", 0)])


def _check_outputs(recipe, path: str, say) -> None:
    """A LoRA adapter as model.path loads merged into its base (hub.py); vLLM loads a model folder itself.
    A push that cannot happen (HF_HUB_OFFLINE=1) is said now; final/ is written all the same."""
    if recipe.generation.backend != "hf" and adapter_base(path) is not None:
        raise UserError(f"model.path: {recipe.model.path} is a LoRA adapter; generation.backend={recipe.generation.backend} "
                        f"loads a whole model: merge it first (selfimprove export {recipe.model.path} --merge-lora "
                        "--out DIR) and set model.path to DIR")
    if recipe.log.push_to_hub and offline():
        say(f"warning: log.push_to_hub={recipe.log.push_to_hub} but HF_HUB_OFFLINE=1: final/ will be written, "
            "not pushed")


def setup(recipe, log=print) -> State:
    """Everything a user can get wrong is checked here, before anything is written."""
    algo, t = get_algorithm(recipe.algorithm.name), recipe.train
    run = RunLog(recipe)  # log.out writable, log.name not another run's; first: the trackers write inside it
    accelerator = make_accelerator(recipe.model.dtype, log_with=trackers.build(recipe.log, run.path))
    run.attach(accelerator)
    say = log if accelerator.is_main_process else (lambda *a: None)
    set_threads(t.threads, "train.threads", say)
    set_seed(recipe.seed)
    if t.on_nonfinite == "skip" and uses_deepspeed(accelerator):  # its engine steps inside backward()
        raise UserError("train.on_nonfinite=skip is not available under DeepSpeed (its engine takes the optimizer "
                        "step itself); use stop")
    if getattr(recipe.algorithm, "kl_estimator", None) == "full" and zero_stage(accelerator) == 3:
        # the reference forward runs only on processes with a micro-batch; ZeRO-3's gathers need all of them
        raise UserError("algorithm.kl_estimator=full is not available under DeepSpeed ZeRO-3; use k3, or ZeRO-2")
    if t.prompts_per_step % accelerator.num_processes:
        raise UserError(f"train.prompts_per_step={t.prompts_per_step} must be divisible by the "
                        f"{accelerator.num_processes} processes")
    rewards = build_rewards(recipe.rewards)
    names = [r.name for r in rewards]
    eval_on = recipe.eval.before or recipe.eval.after or recipe.eval.every
    if eval_on and recipe.eval.reward not in names:
        raise UserError(f"eval.reward '{recipe.eval.reward}' is not one of the recipe's rewards ({', '.join(names)})")
    train_examples, eval_examples = _examples(recipe, eval_on, algo.instruction is not None)

    resume_from = checkpoint.find(recipe, accelerator.num_processes, say)
    path = resolve_model_path(recipe.model.path, log=say)
    _check_outputs(recipe, path, say)
    # plain-text prompts need no chat template (a base model)
    tokenizer = load_tokenizer(path, chat_template=False, **hub_options(recipe.model))
    set_chat_template(tokenizer, recipe.data.chat_template)
    # QLoRA: a frozen quantized base under LoRA; else fp32 master weights (model.dtype sets the autocast precision)
    m = recipe.model
    model = load_quantized(path, m) if m.quantize != "none" else load_model(path, "float32", m)
    _check_lengths(recipe, tokenizer, context_length(model), train_examples, eval_examples)
    if recipe.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    lora = bool(recipe.model.lora_r)
    if lora:
        model = add_lora(model, recipe.model)
    # with LoRA the reference is the same model with its adapters switched off: no second copy
    ref_model = (model if lora else frozen_copy(model)) if algo.needs_reference(recipe.algorithm) else None
    # after the reference copy: the reference stays the starting model. Under ZeRO-3 the parameters are
    # already partitioned here; DeepSpeed's own checkpoint restores them in _resume
    if resume_from is not None and zero_stage(accelerator) != 3:
        checkpoint.load_policy_weights(model, resume_from, lora)

    # train.shared_prefix: probed on the float32 policy before accelerate wraps it
    shared = prefix.decide(t.shared_prefix, model, tokenizer.pad_token_id, uses_deepspeed(accelerator), say)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], t, accelerator)
    # the scheduler stays outside prepare(): accelerate's wrapper would step it once per process
    scheduler = make_scheduler(optimizer, t, t.steps * t.mini_batches)
    configure_deepspeed(accelerator, t)
    model, optimizer = accelerator.prepare(model, optimizer)
    if ref_model is not None and not lora:
        ref_model = ref_model.to(accelerator.device)
    packed = use_packing(t.packing, accelerator.unwrap_model(model), len(tokenizer), accelerator.device,
                         recipe.model.dtype, say)  # a one-time probe; train.packing=true on a model that cannot: error
    prefix.register([model, accelerator.unwrap_model(model), ref_model], shared)
    engine = make_engine(recipe.generation.backend, accelerator.unwrap_model(model), tokenizer,
                         seed=recipe.seed * 1000 + accelerator.process_index, gen=recipe.generation,
                         model_path=str(path), dtype=recipe.model.dtype, accelerator=accelerator,
                         lora_r=recipe.model.lora_r, hub=hub_options(recipe.model))
    return State(recipe, algo, accelerator, model, ref_model, tokenizer, optimizer, scheduler, engine, rewards,
                 train_examples, eval_examples, run, resume_from=resume_from, packing=packed)
