"""Clean exports (issue 12): checkpoints hold a clean Hugging Face folder in the model's own dtype beside the
trainer state, runs end with final/ (model card, optional LoRA merge and push), `selfimprove export` makes the
same folder from any checkpoint, and every MODEL argument takes a LoRA adapter folder."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from selfimprove.cli import main

FAST = dict(eval={"before": False, "after": False, "n": 8},
            train={"steps": 2, "prompts_per_step": 4, "micro_batch_size": 8, "threads": 1})


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    _, meta, body = text.split("---", 2)
    return yaml.safe_load(meta), body


def test_a_bf16_run_resumes_bit_identically_from_its_fp32_master_weights(tmp_path, write_recipe):
    recipe = write_recipe(model={"dtype": "bfloat16"}, seed=2, log={"save_every": 2, "keep_last": 3},
                          train={**FAST["train"], "steps": 4}, eval=FAST["eval"])
    assert main(["train", str(recipe), "log.name=whole"]) == 0
    assert main(["train", str(recipe), "log.name=cut", "train.steps=2"]) == 0
    assert main(["train", str(recipe), "log.name=cut", "train.resume=auto"]) == 0
    for name in ("master_weights.safetensors", "model/model.safetensors"):
        whole = load_file(str(tmp_path / "runs/whole/checkpoints/step-000004" / name))
        cut = load_file(str(tmp_path / "runs/cut/checkpoints/step-000004" / name))
        assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole), name
    assert {t.dtype for t in whole.values()} == {torch.bfloat16}


def test_the_final_folder_loads_and_its_card_names_the_base_and_the_held_out_figures(tmp_path, mini_model,
                                                                                      write_recipe, capsys):
    recipe = write_recipe(**{**FAST, "eval": {"before": True, "after": True, "n": 8}},
                          log={"push_to_hub": "someone/tiny-nft"})
    assert main(["train", str(recipe)]) == 0  # the push fails (offline); the run does not
    out = capsys.readouterr().out
    run = tmp_path / "runs/run"
    final, ckpt = run / "final", run / "checkpoints/step-000002"
    assert "warning: log.push_to_hub=someone/tiny-nft but HF_HUB_OFFLINE=1" in out  # said before training
    assert f"warning: log.push_to_hub: could not push {final} to someone/tiny-nft (OfflineModeIsEnabled" in out
    assert f"push it later with `hf upload someone/tiny-nft {final}`" in out
    assert sorted(p.name for p in final.iterdir()) == sorted(
        ["README.md", *(p.name for p in (ckpt / "model").iterdir())])  # the model folder and the card, no state
    assert not any(p.name.startswith(("trainer_state", "master_weights")) for p in final.iterdir())
    model = AutoModelForCausalLM.from_pretrained(final)
    saved = load_file(str(ckpt / "model" / "model.safetensors"))
    assert all(torch.equal(model.state_dict()[k], saved[k]) for k in saved)
    meta, body = card(final)
    assert meta["library_name"] == "transformers" and meta["tags"] == ["selfimprove", "nft"]
    assert "base_model" not in meta  # a local folder is no hub id; the Hub would refuse it
    summary = json.loads((run / "summary.json").read_text())
    assert f"base model | `{mini_model}`" in body and "| steps | 2 |" in body
    gain = summary["accuracy_gain"] * 100
    assert (f"| accuracy | {summary['accuracy_before']:.1%} | {summary['accuracy_after']:.1%} | {gain:+.1f} points |"
            in body)
    mc = summary["eval_rewards_after"]["math_correct"]
    assert f"| mean math_correct | {summary['eval_rewards_before']['math_correct']:.4g} | {mc:.4g} |" in body
    assert "## Recipe" in body and "algorithm:\n  name: nft" in body


def test_lora_exports_merge_to_the_adapter_applied_to_the_base_and_eval_takes_the_adapter(tmp_path, mini_model,
                                                                                          write_recipe, capsys):
    from peft import PeftModel

    recipe = write_recipe(**FAST, model={"lora_r": 4}, log={"merge_lora_final": True})
    assert main(["train", str(recipe)]) == 0
    ckpt = tmp_path / "runs/run/checkpoints/step-000002"
    assert (ckpt / "model/adapter_config.json").is_file() and not (ckpt / "model/config.json").exists()
    merged = tmp_path / "merged"
    assert main(["export", str(ckpt), "--merge-lora", "--out", str(merged)]) == 0
    ids = torch.tensor([[1, 5, 9, 14, 3, 7, 2]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(mini_model)
        plain = base(ids).logits
        adapted = PeftModel.from_pretrained(base, ckpt / "model")(ids).logits
        got = AutoModelForCausalLM.from_pretrained(merged)(ids).logits
    assert not torch.allclose(adapted, plain, atol=1e-4)  # the adapter trained: the comparison can fail
    assert torch.allclose(got, adapted, atol=1e-5)
    assert not (merged / "adapter_config.json").exists() and card(merged)[0]["library_name"] == "transformers"
    # log.merge_lora_final wrote the same merged model as final/
    final = load_file(str(tmp_path / "runs/run/final/model.safetensors"))
    again = load_file(str(merged / "model.safetensors"))
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final)

    # selfimprove eval takes the checkpoint (its adapter folder) and the merged export alike
    results = []
    for model in (ckpt, ckpt / "model", merged):
        out = tmp_path / f"eval{len(results)}.json"
        assert main(["eval", str(model), "--data", "arith", "--n", "8", "--max-new-tokens", "5", "--out", str(out)]) == 0
        results.append(json.loads(out.read_text())["accuracy"])
    assert results[0] == results[1] == results[2]

    # without --merge-lora the export is the adapter with a peft card naming the base
    adapter = tmp_path / "adapter"
    assert main(["export", str(ckpt), "--out", str(adapter)]) == 0
    meta, body = card(adapter)
    assert (adapter / "adapter_model.safetensors").is_file() and meta["library_name"] == "peft"
    assert "lora" in meta["tags"] and "the adapter alone" in body


def test_export_and_resume_mistakes_are_one_line(tmp_path, write_recipe, capsys):
    recipe = write_recipe(**FAST)
    assert main(["train", str(recipe)]) == 0
    ckpt = tmp_path / "runs/run/checkpoints/step-000002"
    capsys.readouterr()
    cases = [
        (["export", str(tmp_path)], "is not a checkpoint or model folder"),
        (["export", str(ckpt), "--merge-lora", "--out", str(tmp_path / "m")], "holds no LoRA adapter"),
        (["export", str(ckpt), "--push-to-hub", "me/x", "--out", str(tmp_path / "p")], "HF_HUB_OFFLINE=1 is set"),
        (["export", str(ckpt), "--push-to-hub", "not a repo"], "is not a Hugging Face repo id"),
        (["export", str(ckpt)], "already holds files; choose a new folder or pass --overwrite"),  # final/ exists
        (["export", str(ckpt), "--out", str(tmp_path / "runs/run"), "--overwrite"], "is (or holds) the checkpoint"),
        (["export", str(ckpt), "--out", str(tmp_path), "--overwrite"], "is (or holds) the checkpoint"),
        (["train", str(recipe), "log.name=other", "log.merge_lora_final=true"], "set model.lora_r"),
        (["train", str(recipe), "log.name=other", "log.push_to_hub=me/x", "log.save_final=false"],
         "log.push_to_hub acts on final/"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in one_error_line(capsys), argv
    assert not (tmp_path / "m").exists() and not (tmp_path / "p").exists()  # nothing half-written
    assert main(["export", str(ckpt), "--overwrite"]) == 0

    # a checkpoint of the older layout (model files beside the trainer state) is refused for resume only
    old = tmp_path / "old"
    shutil.copytree(ckpt, old)
    for f in (old / "model").iterdir():
        f.rename(old / f.name)
    (old / "model").rmdir()
    assert main(["train", str(recipe), f"train.resume={old}", "train.steps=4"]) == 2
    assert "is a checkpoint of the older layout" in one_error_line(capsys)
    assert main(["export", str(old), "--out", str(tmp_path / "from-old")]) == 0
    assert not (tmp_path / "from-old" / "trainer_state.json").exists()


def test_an_adapter_whose_base_is_gone_is_one_line(tmp_path, mini_model, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone"),
                                                             "peft_type": "LORA"}))
    assert main(["eval", str(adapter), "--data", "arith", "--n", "2"]) == 2
    err = one_error_line(capsys)
    assert f"the adapter {adapter} names its base model {tmp_path / 'gone'}, which cannot be found" in err


@pytest.mark.parametrize("backend", ["vllm"])
def test_a_vllm_backend_refuses_an_adapter_as_model_path(tmp_path, write_recipe, capsys, backend):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny", "peft_type": "LORA"}))
    recipe = write_recipe(**FAST, model={"path": str(adapter)}, generation={"backend": backend})
    assert main(["train", str(recipe)]) == 2
    assert "is a LoRA adapter; generation.backend=vllm loads a whole model: merge it first" in one_error_line(capsys)
