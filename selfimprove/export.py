"""Exports: a checkpoint's model as a clean, documented Hugging Face folder.

`runs/NAME/final/` is written at the end of training (log.save_final) and `selfimprove export CKPT` makes
the same folder from any checkpoint: the checkpoint's `model/` folder (config, weights in model.dtype,
tokenizer, generation config; the adapter files with LoRA, or with `merge_lora` the adapter merged into its
base by PEFT's merge_and_unload: a plain model) plus README.md, a Hugging Face model card (base model,
algorithm, steps, the held-out figures of summary.json, the recipe, the selfimprove version). The run's
config.yaml and summary.json are read from the run folder above the checkpoint when it has them.

The folder is written under a hidden temporary name and renamed into place, so it exists only when whole.
A push (log.push_to_hub, --push-to-hub) uploads it with huggingface_hub. At the end of a run a failed push
(offline, no permission) is one warning line naming the folder, and the run still succeeds: the trained
model is on disk. `selfimprove export --push-to-hub` exists to push, so there a push that cannot happen
is an error: before any work when HF_HUB_OFFLINE=1, else after the folder is written (it stays).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import yaml
from huggingface_hub import HfApi, ModelCard, ModelCardData, constants
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AutoModelForCausalLM

import selfimprove
from selfimprove.checkpoint import DTYPES, MASTER, MODEL_DIR, STATE_JSON, STATE_TENSORS, newest
from selfimprove.config import check_repo
from selfimprove.errors import UserError
from selfimprove.hub import NAMED_MODELS, adapter_base, from_pretrained, load_tokenizer, save_model
from selfimprove.runlog import writable_folder

# what an older-layout checkpoint holds beside its model files: never part of an export
NOT_EXPORTED = {STATE_JSON, STATE_TENSORS, MASTER, "deepspeed", "README.md"}


def model_folder(ckpt: Path) -> Path:
    """The Hugging Face folder inside `ckpt`: a checkpoint's model/, or an older-layout checkpoint, a model
    folder or an adapter folder itself."""
    if (ckpt / MODEL_DIR).is_dir():
        return ckpt / MODEL_DIR
    if (ckpt / "config.json").is_file() or (ckpt / "adapter_config.json").is_file():
        return ckpt
    raise UserError(f"export: {ckpt} is not a checkpoint or model folder (no {MODEL_DIR}/, config.json or "
                    "adapter_config.json)")


def run_folder(ckpt: Path) -> Path | None:
    """The run folder of a checkpoint (runs/NAME for runs/NAME/checkpoints/step-N), or None."""
    run = ckpt.resolve().parent.parent
    return run if ckpt.resolve().parent.name == "checkpoints" and (run / "config.yaml").is_file() else None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}  # a damaged summary only thins the card
    return data if isinstance(data, dict) else {}


def check_out(out: Path, overwrite: bool) -> None:
    """A model folder to write: a new or empty folder (or overwrite), inside a writable folder."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out: {out} already holds files; choose a new folder or pass --overwrite")
    writable_folder(out.parent, "--out")


def export(ckpt: Path, out: Path, merge_lora: bool = False) -> Path:
    """The clean folder `out` from checkpoint `ckpt` (replacing `out` once the new one is whole)."""
    src, run = model_folder(ckpt), run_folder(ckpt)
    recipe = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) if run else {}
    summary = _read_json(run / "summary.json") if run else {}
    state = _read_json(ckpt / STATE_JSON)
    adapter = adapter_base(str(src))
    if merge_lora and adapter is None:
        raise UserError(f"export: --merge-lora: {ckpt} holds no LoRA adapter (adapter_config.json)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(src, tmp, recipe or {}, state, merge_lora)
        card = model_card(recipe, summary, state.get("step", summary.get("steps")), adapter, merged=merge_lora)
        card.save(tmp / "README.md")
    except BaseException:  # nothing half-written stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _write(src: Path, tmp: Path, recipe: dict, state: dict, merge_lora: bool) -> None:
    if not merge_lora:
        shutil.copytree(src, tmp, ignore=lambda folder, names: [n for n in names if n in NOT_EXPORTED])
        return
    # fp32 merge, then saved in the precision the run saved its weights in; the base loaded as the run loaded
    # it (model.revision, trust_remote_code), else the adapter would be merged into other weights
    m = recipe.get("model") or {}
    options = {k: m[k] for k in ("revision", "trust_remote_code") if m.get(k)}
    dtype = m.get("dtype") or state.get("run", {}).get("dtype") or "float32"
    model = from_pretrained(AutoModelForCausalLM, str(src), "export", dtype=torch.float32, **options)
    save_model(model, tmp, DTYPES[dtype])
    load_tokenizer(str(src), "export", chat_template=False, **options).save_pretrained(tmp)


def _hub_id(name: str | None) -> str | None:
    """`name` when it is a hub model id (for the card's base_model, which the Hub checks), else None."""
    if not name or name in NAMED_MODELS or Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def model_card(recipe: dict, summary: dict, steps, adapter: str | None, merged: bool) -> ModelCard:
    """The README.md of an export: metadata (library, base model, tags) and what the run did and measured."""
    model, algo = recipe.get("model", {}), recipe.get("algorithm", {}).get("name") or summary.get("algorithm")
    base = model.get("path") or summary.get("model") or adapter
    lora = adapter is not None and not merged
    data = ModelCardData(library_name="peft" if lora else "transformers", base_model=_hub_id(base),
                         pipeline_tag="text-generation",
                         tags=["selfimprove", *([algo] if algo else []), *(["lora"] if adapter else [])])
    lines = [f"# {algo or 'selfimprove'} model", "",
             f"Trained from `{base or 'unknown'}` with selfimprove {selfimprove.__version__}"
             + (f" ({algo}, {steps} steps)." if algo else "."), "",
             "| | |", "|---|---|", f"| base model | `{base or 'unknown'}` |", f"| algorithm | {algo or 'unknown'} |",
             f"| steps | {steps if steps is not None else 'unknown'} |", f"| precision | {model.get('dtype', 'float32')} |"]
    if adapter is not None:
        lines.append(f"| LoRA | r={model.get('lora_r', '?')}, "
                     + ("merged into the base |" if merged else f"the adapter alone (base: `{adapter}`) |"))
    lines += ["", *held_out(summary, recipe.get("eval", {}).get("reward")), "## Use", "", "```python"]
    lines += (["from peft import AutoPeftModelForCausalLM", "model = AutoPeftModelForCausalLM.from_pretrained(\"THIS_FOLDER\")"]
              if lora else ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                            "model = AutoModelForCausalLM.from_pretrained(\"THIS_FOLDER\")",
                            "tokenizer = AutoTokenizer.from_pretrained(\"THIS_FOLDER\")"])
    lines += ["```", "", "`selfimprove eval THIS_FOLDER --data ...` evaluates it.", ""]
    if recipe:
        lines += ["## Recipe", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def held_out(summary: dict, reward: str | None) -> list[str]:
    """The held-out section: accuracy before / after / gain, and every reward's mean on the eval set."""
    if not any(k in summary for k in ("accuracy_before", "accuracy_after", "eval_rewards_after")):
        return ["## Held-out evaluation", "", "None was run (eval.before / eval.after were off).", ""]
    pct = lambda v: f"{v:.1%}" if isinstance(v, (int, float)) else "-"  # noqa: E731
    gain = summary.get("accuracy_gain")
    lines = ["## Held-out evaluation", "", f"{summary.get('n_eval', '?')} held-out problems"
             + (f", correct by `{reward}`" if reward else "") + ".", "",
             "| metric | before | after | gain |", "|---|---|---|---|",
             f"| accuracy | {pct(summary.get('accuracy_before'))} | {pct(summary.get('accuracy_after'))} | "
             + (f"{gain * 100:+.1f} points |" if isinstance(gain, (int, float)) else "- |")]
    before, after = summary.get("eval_rewards_before", {}), summary.get("eval_rewards_after", {})
    for name in dict.fromkeys([*before, *after]):
        b, a = before.get(name), after.get(name)
        delta = f"{a - b:+.4g}" if b is not None and a is not None else "-"
        lines.append(f"| mean {name} | {'-' if b is None else f'{b:.4g}'} | {'-' if a is None else f'{a:.4g}'} | {delta} |")
    return [*lines, ""]


def push(folder: Path, repo: str) -> str:
    """Upload `folder` to the model repo `repo` (created when missing); returns its URL."""
    api = HfApi()
    api.create_repo(repo, exist_ok=True, repo_type="model")
    api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                      commit_message=f"selfimprove {selfimprove.__version__} export")
    return f"{constants.ENDPOINT}/{repo}"


def _why(e: Exception) -> str:
    return f"{type(e).__name__}: {next((s.strip() for s in str(e).splitlines() if s.strip()), '')[:200]}"


def offline() -> bool:
    return bool(constants.HF_HUB_OFFLINE)


def write_final(state, log) -> Path | None:
    """runs/NAME/final/ from the run's newest checkpoint (log.save_final), then log.push_to_hub. A push that
    fails is a warning: the run succeeded and its folder is whole."""
    recipe, run = state.recipe, state.run
    last = newest(run.path) if run.enabled and recipe.log.save_final else None
    if last is None:
        return None
    try:
        out = export(last[1], run.path / "final", recipe.log.merge_lora_final)
    except (UserError, OSError) as e:  # the run succeeded and its checkpoints are whole: a warning, not a failure
        log(f"warning: could not write {run.path / 'final'} ({e}); the checkpoints are whole: try "
            f"`selfimprove export {last[1]}`")
        return None
    log(f"final model: {out}")
    repo = recipe.log.push_to_hub
    if repo:
        try:
            log(f"pushed {out} to {push(out, repo)}")
        except Exception as e:  # offline, no token, no permission: the run's result is on disk all the same
            log(f"warning: log.push_to_hub: could not push {out} to {repo} ({_why(e)}); the folder is whole: "
                f"push it later with `hf upload {repo} {out}`")
    return out


def cli_export(checkpoint: str, out: str | None, merge_lora: bool, overwrite: bool, repo: str | None) -> Path:
    """`selfimprove export`: every input checked before anything is written."""
    ckpt = Path(checkpoint).expanduser()
    if not ckpt.is_dir():
        raise UserError(f"export: {checkpoint} is not a folder")
    model_folder(ckpt)
    if repo:
        check_repo(repo, "--push-to-hub")
        if offline():
            raise UserError("--push-to-hub: HF_HUB_OFFLINE=1 is set (no network); export without --push-to-hub, "
                            "or unset it")
    run = run_folder(ckpt)
    if out is None and run is None:
        raise UserError(f"export: {checkpoint} is not inside a run folder (runs/NAME/checkpoints/step-N); give --out")
    target = Path(out).expanduser() if out else run / "final"
    guarded = [ckpt.resolve()] + ([run.resolve()] if run else [])
    if any(g == target.resolve() or target.resolve() in g.parents for g in guarded):
        raise UserError(f"export: --out {target} is (or holds) the checkpoint or its run folder; choose another folder")
    check_out(target, overwrite)
    export(ckpt, target, merge_lora)
    print(f"exported {ckpt} to {target}")
    if repo:
        try:
            print(f"pushed {target} to {push(target, repo)}")
        except Exception as e:  # the folder is whole: say so in the one line
            raise UserError(f"--push-to-hub: could not push {target} to {repo} ({_why(e)}); the folder is whole") from None
    return target
