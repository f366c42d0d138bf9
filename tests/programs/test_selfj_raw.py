"""Self-J on a base model (no chat template): views and the policy's prompts in the reference's raw format
"{instruction}\n\n### Response:" (nusnlp/Self-J templates/wizardlm.json), and the paper recipe starts."""

import json
from pathlib import Path

import pytest

from reward import selfj as sj
from selfimprove.errors import UserError
from selfimprove.optim import lr_lambda
from selfimprove.policy import load_tokenizer
from selfimprove.programs.train_judge import Config, encode_pairs, train
from selfimprove.recipe import load_recipe
from selfimprove.trace import Trace, Turn

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "recipes/selfj/llama2-13b_lora.yaml"


@pytest.fixture(scope="module")
def base_model(base_model):
    assert load_tokenizer(base_model, chat_template=False).chat_template is None
    return base_model


def test_raw_format_modes(base_model, mini_model):
    base, chat = load_tokenizer(base_model, chat_template=False), load_tokenizer(mini_model)
    assert sj.raw_format(base, "auto") == "{instruction}\n\n### Response:"
    assert sj.raw_format(chat, "auto") is None and sj.raw_format(chat, "true") is None
    assert sj.raw_format(chat, "false", "Q: {instruction} A:") == "Q: {instruction} A:"


def test_views_render_in_the_raw_format_with_the_tokenizers_bos(base_model):
    tok = load_tokenizer(base_model, chat_template=False)
    texts = sj.render_texts(tok, "rate 0 to 9: {question} {answer}", ["12+5="], ["17"], raw=sj.RAW_FORMAT)
    assert texts == ["rate 0 to 9: 12+5= 17\n\n### Response:"]
    ids = sj.render_views(tok, "rate 0 to 9: {question} {answer}", ["12+5="], ["17"], raw=sj.RAW_FORMAT)[0]
    assert ids == tok("rate 0 to 9: 12+5= 17\n\n### Response:", add_special_tokens=True)["input_ids"]
    # the training pair is that prompt + label digit + EOS, for both views
    tr = Trace(id="a", group_id="g", task="t", prompt=[{"role": "user", "content": "12+5="}], answer="17",
               turns=[Turn("user", "", [1]), Turn("assistant", "17", [2], trainable=True)], meta={"selfj.label": 7})
    cfg = Config(teacher_template="rate 0 to 9: {question} {answer} reference {reference}",
                 student_template="rate 0 to 9: {question} {answer}")
    (teacher, student), = encode_pairs(tok, [tr], cfg, 256)
    assert student == ids + [sj.digit_token_ids(tok)[7], tok.eos_token_id]
    assert tok.decode(teacher[:-2]).endswith("rate 0 to 9: 12+5= 17 reference 17\n\n### Response:")


def test_chat_mode_true_refuses_a_base_tokenizer(base_model, tmp_path):
    recipe = paper_recipe(base_model, tmp_path, "algorithm.apply_chat_template=true")
    with pytest.raises(UserError, match="has no chat template"):
        train(recipe, log=lambda *a: None)
    assert not (tmp_path / "runs" / "paper").exists()


def test_a_format_without_instruction_is_refused(base_model, tmp_path):
    with pytest.raises(UserError, match=r"algorithm.prompt_format has no \{instruction\} placeholder"):
        paper_recipe(base_model, tmp_path, "algorithm.prompt_format=### Response:")


def paper_recipe(model: str, tmp_path: Path, *extra):
    """The paper recipe as written (LoRA r 16 on q/k/v/o, bf16, gradient checkpointing, linear schedule after
    warm-up, raw format), with sizes made tiny: a few questions, 2 steps, the tiny model's short views."""
    data = tmp_path / "selfj.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"{a}+{b}=", "reference": str(a + b)}) + "\n"
                            for a, b in [(12, 5), (3, 4), (20, 7), (8, 8), (1, 9), (30, 2)]))
    return load_recipe(PAPER, [
        f"model.path={model}", f"data.train={data}", f"data.eval={data}", "data.max_prompt_tokens=200",
        "algorithm.policy=null", "algorithm.n_train_questions=4", "algorithm.n_eval_questions=4",
        "algorithm.score_batch_size=4", "generation.max_new_tokens=6", "generation.batch_size=8",
        "algorithm.teacher_template=rate 0 to 9: {question} {answer} reference {reference}",
        "algorithm.student_template=rate 0 to 9: {question} {answer}",
        "train.batch_size=2", "train.micro_batch_size=1", "train.max_steps=2",
        f"log.out={tmp_path / 'runs'}", "log.name=paper", "log.progress=false", *extra])


def test_the_paper_recipe_starts_on_a_base_tokenizer(base_model, tmp_path):
    recipe = paper_recipe(base_model, tmp_path)
    t, a = recipe.train, recipe.algorithm
    assert (t.lr_schedule, t.warmup_steps, t.lr, t.epochs) == ("linear", 100, 3.0e-4, 2)
    assert (recipe.model.lora_r, recipe.model.lora_alpha, recipe.model.lora_target) == (16, 16, "q_proj,k_proj,v_proj,o_proj")
    assert a.apply_chat_template == "false" and a.prompt_format == "{instruction}\n\n### Response:"
    summary = train(recipe, log=lambda *a: None)
    assert summary["steps"] == 2
    run = Path(summary["run_dir"])
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # logged after the scheduler's step: the rate of step 2 of the 100 warm-up steps
    assert rows[0]["lr"] == pytest.approx(3.0e-4 * 2 / 100)
    f = lr_lambda(t.lr_schedule, t.warmup_steps, 300)  # then linear decay: half way at step 200 of 300
    assert (f(0), f(99), f(100), f(200), f(300)) == pytest.approx((0.01, 1.0, 1.0, 0.5, 0.0))
    saved = json.loads((run / "judge" / "selfj.json").read_text())
    assert saved["raw_format"] == "{instruction}\n\n### Response:"
    labels = [json.loads(x) for x in (run / "labels_train.jsonl").read_text().splitlines()]
    assert len(labels) == 4
    for tr in labels:  # the policy answered in the raw format; the question itself stays bare
        question = tr["prompt"][-1]["content"]
        assert tr["turns"][0]["text"].endswith(f"{question}\n\n### Response:")
        assert question.endswith("=") and "###" not in question
    # the trained judge scores through judge_model in the format it was trained with
    out = sj.judge_model([Trace.from_dict(labels[0])], model=str(run / "judge"))
    assert 0.0 <= out[0] <= 1.0
