"""TRL's dataset formats and loading through `datasets` (issue 12): standard (raw text) and conversational
prompts, a final assistant message continued, data.apply_chat_template, base models without a chat template,
a chat-template override and its kwargs; Hub snapshot folders with configs, globs, a datasets.Dataset in
Python; GSM8K-, MATH- and verl-style data trained a few steps with every reward checked independently."""

import json
import re
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selfimprove.cli import main
from selfimprove.config import DataConfig
from selfimprove.data import chat_config, encode_prompts, load_examples, render_prompt, set_chat_template
from selfimprove.errors import UserError
from selfimprove.loop import run
from selfimprove.policy import load_tokenizer
from selfimprove.recipe import load_recipe
from selfimprove.rollout import instruction_ids

TEMPLATED = "<|user|>{q}<|end|><|assistant|>"  # the tiny model's own chat format, written out by hand


@pytest.fixture(scope="module")
def problems():
    """Eight arithmetic problems the tiny world knows: (question, integer answer)."""
    examples = load_examples("arith", DataConfig(), "test")[:8]
    return [(ex.prompt[-1]["content"], int(ex.answer)) for ex in examples]


@pytest.fixture
def tok(mini_model):
    return load_tokenizer(mini_model)


def examples_of(rows, **cfg):
    return load_examples(datasets.Dataset.from_list(rows), DataConfig(**cfg), "train")


# --------------------------------------------------------------------------- prompt formats


def test_standard_prompts_go_raw_and_conversations_through_the_template(tok):
    raw, chat = examples_of([{"prompt": "24-10=", "answer": "14"}]), examples_of(
        [{"prompt": [{"role": "user", "content": "24-10="}], "answer": "14"}])
    assert raw[0].raw and render_prompt(tok, raw[0]) == "24-10="
    assert encode_prompts(tok, raw, 64) == [tok("24-10=")["input_ids"]]  # TRL: tokenizer(text), its own specials
    assert render_prompt(tok, chat[0]) == "<|user|>24-10=<|end|><|assistant|>"
    forced = examples_of([{"prompt": "24-10=", "answer": "14"}], apply_chat_template="true")
    assert render_prompt(tok, forced[0]) == render_prompt(tok, chat[0])
    # an already templated text is not templated twice
    done = examples_of([{"prompt": TEMPLATED.format(q="24-10="), "answer": "14"}])
    assert render_prompt(tok, done[0]) == "<|user|>24-10=<|end|><|assistant|>"
    # a system prompt or a prompt_template makes a user message: templated under auto
    sys_ex = examples_of([{"prompt": "24-10=", "answer": "14"}], system_prompt="Be exact.")
    assert render_prompt(tok, sys_ex[0]) == "<|system|>Be exact.<|end|><|user|>24-10=<|end|><|assistant|>"


def test_a_final_assistant_message_is_continued_not_a_new_turn(tok):
    ex = examples_of([{"prompt": [{"role": "user", "content": "24-10="}, {"role": "assistant", "content": "1"}],
                       "answer": "14"}])
    assert render_prompt(tok, ex[0]) == "<|user|>24-10=<|end|><|assistant|>1"


def test_apply_chat_template_false_refuses_conversations_and_two_turn_methods():
    with pytest.raises(UserError, match=r"row 1: 'prompt' holds chat messages, which need the chat template"):
        examples_of([{"prompt": [{"role": "user", "content": "q"}], "answer": "1"}], apply_chat_template="false")
    with pytest.raises(UserError, match="two-turn episodes extend a conversation"):
        chat_config(DataConfig(apply_chat_template="false"), two_turn=True)
    assert chat_config(DataConfig(), two_turn=True).apply_chat_template == "true"
    with pytest.raises(UserError, match="synthetic task 'arith' makes chat prompts"):
        load_examples("arith", DataConfig(apply_chat_template="false"), "test")


def test_chat_template_override_from_a_file_and_its_kwargs(tok, tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text("{% for m in messages %}[{{ m['role'] }}|{{ greeting }}]{{ m['content'] }}{% endfor %}"
                    "{% if add_generation_prompt %}[assistant]{% endif %}")
    set_chat_template(tok, str(path))
    ex = examples_of([{"prompt": [{"role": "user", "content": "2+2="}], "answer": "4"}],
                     chat_template_kwargs={"greeting": "hi"})
    assert render_prompt(tok, ex[0]) == "[user|hi]2+2=[assistant]"
    with pytest.raises(UserError, match=r"data.chat_template does not render a conversation \(TemplateSyntaxError"):
        set_chat_template(tok, "{% for m in messages %}")


def test_a_base_model_without_chat_template_trains_on_raw_prompts(tmp_path, base_model, write_recipe, problems,
                                                                  capsys):
    base = base_model
    assert load_tokenizer(base, chat_template=False).chat_template is None
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": TEMPLATED.format(q=q), "answer": a}) + "\n" for q, a in problems))
    p = write_recipe(model={"path": base}, data={"train": str(data), "eval": None}, eval={},
                     train={"steps": 1})
    assert run(load_recipe(p), log=lambda *a: None)["steps"] == 1
    conv = tmp_path / "c.jsonl"
    conv.write_text(json.dumps({"prompt": [{"role": "user", "content": "1+1="}], "answer": 2}) + "\n")
    code = main(["train", str(p), f"data.train={conv}", "log.name=conv"])
    assert code == 2 and not (tmp_path / "runs" / "conv").exists()
    assert "is a conversation, but the tokenizer has no chat template" in capsys.readouterr().err


# --------------------------------------------------------------------------- sources


def write_parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_a_hub_snapshot_folder_with_configs_and_splits(tmp_path):
    snap = tmp_path / "gsm8k"
    for config, n in (("main", 3), ("socratic", 2)):
        write_parquet(snap / config / "train-00000-of-00001.parquet",
                      [{"question": f"{config} {i}", "answer": f"#### {i}"} for i in range(n)])
        write_parquet(snap / config / "test-00000-of-00001.parquet", [{"question": "t", "answer": "#### 0"}])
    (snap / "README.md").write_text(
        "---\nconfigs:\n- config_name: main\n  data_files:\n  - {split: train, path: main/train-*}\n"
        "  - {split: test, path: main/test-*}\n- config_name: socratic\n  data_files:\n"
        "  - {split: train, path: socratic/train-*}\n  - {split: test, path: socratic/test-*}\n---\n# GSM8K\n")
    cfg = DataConfig(prompt_column="question", config="socratic")
    assert [ex.prompt_text for ex in load_examples(str(snap), cfg, "train")] == ["socratic 0", "socratic 1"]
    main_cfg = DataConfig(prompt_column="question", config="main")
    assert len(load_examples(str(snap), main_cfg, "train")) == 3 and len(load_examples(str(snap), main_cfg, "test")) == 1
    with pytest.raises(UserError, match=r"cannot load .*gsm8k split 'validation'"):
        load_examples(str(snap), main_cfg, "validation")


def test_globs_and_not_a_dataset_folder(tmp_path):
    for k in range(2):
        (tmp_path / f"part-{k}.jsonl").write_text("".join(json.dumps({"prompt": f"{k}-{i}", "answer": i}) + "\n"
                                                          for i in range(3)))
    ex = load_examples(str(tmp_path / "part-*.jsonl"), DataConfig(), "train")
    assert sorted(e.prompt_text for e in ex) == ["0-0", "0-1", "0-2", "1-0", "1-1", "1-2"]
    with pytest.raises(UserError, match=r"no file matches .*nothing-\*.jsonl"):
        load_examples(str(tmp_path / "nothing-*.jsonl"), DataConfig(), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a saved dataset .* nor a dataset snapshot"):
        load_examples(str(tmp_path / "empty"), DataConfig(), "train")


def test_a_datasets_dataset_in_python_trains_and_is_recorded(tmp_path, write_recipe, problems):
    recipe = load_recipe(write_recipe(eval={}, train={"steps": 1}))
    recipe.data.train = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": q}], "answer": a}
                                                    for q, a in problems])
    recipe.data.eval = None
    summary = run(recipe, log=lambda *a: None)
    assert "train: <Dataset of 8 rows>" in (Path(summary["run_dir"]) / "config.yaml").read_text()


# --------------------------------------------------------------------------- the field's formats, trained


def number(text: str) -> int | None:
    """The completion's last integer: an independent reading of what math_correct decides."""
    found = re.findall(r"-?\d+", text.replace("\\boxed", ""))
    return int(found[-1]) if found else None


def verl_score(data_source, solution_str, ground_truth, extra_info=None):
    """A verl-style compute_score."""
    assert data_source == "arith" and isinstance(extra_info, dict)
    return {"score": float(number(solution_str) == int(ground_truth)), "extra": extra_info["index"]}


def trained_traces(write_recipe, tmp_path, name: str, data: dict, rewards: list) -> list[dict]:
    p = write_recipe(name, data=data, rewards=rewards, eval={}, train={"steps": 2, "prompts_per_step": 8},
                     generation={"n": 4, "max_new_tokens": 5, "temperature": 1.0},
                     log={"traces_every": 1, "traces_per_step": 32, "name": name})
    summary = run(load_recipe(p), log=lambda *a: None)
    assert summary["steps"] == 2
    return [json.loads(x) for x in (tmp_path / "runs" / name / "traces.jsonl").read_text().splitlines()]


def check_rewards(traces: list[dict], gold: dict, key: str) -> None:
    assert len(traces) == 64
    for tr in traces:
        question = tr["prompt"][-1]["content"]
        expected = float(number(tr["turns"][-1]["text"]) == gold[question])
        assert tr["rewards"][key] == expected, (question, tr["turns"][-1]["text"])
    assert any(tr["rewards"][key] == 1.0 for tr in traces)


def test_gsm8k_style_answers_after_hashes(tmp_path, write_recipe, problems):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": f"Work it out.\n#### {a}"}) + "\n"
                            for q, a in problems))
    traces = trained_traces(write_recipe, tmp_path, "gsm8k", {"train": str(path), "eval": None, "prompt_column":
                            "question", "apply_chat_template": True}, [{"fn": "math_correct"}])
    check_rewards(traces, dict(problems), "math_correct")


def test_math_style_boxed_solutions_in_conversational_format(tmp_path, write_recipe, problems):
    path = tmp_path / "math.jsonl"
    path.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": q}],
                                        "solution": f"So the result is $\\boxed{{{a}}}$."}) + "\n" for q, a in problems))
    traces = trained_traces(write_recipe, tmp_path, "math", {"train": str(path), "eval": None,
                                                             "answer_column": "solution"}, [{"fn": "math_correct"}])
    check_rewards(traces, dict(problems), "math_correct")


def test_verl_parquet_with_nested_ground_truth_and_compute_score(tmp_path, write_recipe, problems):
    path = tmp_path / "verl" / "train.parquet"
    write_parquet(path, [{"data_source": "arith", "prompt": [{"role": "user", "content": q}], "ability": "math",
                          "reward_model": {"style": "rule", "ground_truth": str(a)}, "extra_info": {"index": i}}
                         for i, (q, a) in enumerate(problems)])
    traces = trained_traces(write_recipe, tmp_path, "verl", {"train": str(path), "eval": None,
                            "answer_column": "reward_model.ground_truth"},
                            [{"fn": "tests.test_trl_data:verl_score", "name": "verl"}])
    check_rewards(traces, dict(problems), "verl")


def test_a_hub_snapshot_of_templated_text_trains_raw(tmp_path, write_recipe, problems, tok):
    snap = tmp_path / "snap"
    write_parquet(snap / "data" / "train-00000-of-00001.parquet",
                  [{"prompt": TEMPLATED.format(q=q), "answer": str(a)} for q, a in problems])
    (snap / "README.md").write_text("# a dataset card\n")
    traces = trained_traces(write_recipe, tmp_path, "snap", {"train": str(snap), "eval": None},
                            [{"fn": "math_correct"}])
    for tr in traces:  # the prompt went in as written: not wrapped in the template a second time
        assert tr["turns"][0]["text"] == tr["prompt_text"] and tr["prompt_text"].count("<|user|>") == 1
        tr["prompt"] = [{"role": "user", "content": tr["prompt_text"][len("<|user|>"):-len("<|end|><|assistant|>")]}]
    check_rewards(traces, dict(problems), "math_correct")


@pytest.mark.parametrize("override, message", [
    ("data.apply_chat_template=maybe", "data.apply_chat_template must be auto, true or false, got 'maybe'"),
    ("data.chat_template_kwargs={tokenize: 1}", "data.chat_template_kwargs: 'tokenize' is not a template variable"),
    ("data.chat_template=missing.jinja", "data.chat_template: cannot read missing.jinja"),
    ("data.chat_template={% if %}", "data.chat_template does not render a conversation"),
    ("data.system_prompt=Hi|data.apply_chat_template=false", "data.system_prompt needs the chat template"),
])
def test_bad_data_options_are_one_line(tmp_path, write_recipe, capsys, override, message):
    code = main(["train", str(write_recipe()), *override.split("|")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "runs").exists()


def test_eval_apply_chat_template_flag(tmp_path, mini_model, problems):
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"prompt": q, "answer": a}) + "\n" for q, a in problems))
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": q}], "answer": a}) + "\n"
                            for q, a in problems))
    firsts = {}
    for name, data, mode in (("raw", text, "auto"), ("forced", text, "true"), ("chat", chat, "auto")):
        out = tmp_path / f"{name}.jsonl"
        assert main(["eval", mini_model, "--data", str(data), "--max-new-tokens", "5", "--traces", str(out),
                     "--apply-chat-template", mode]) == 0
        firsts[name] = [json.loads(x)["turns"][0]["text"] for x in out.read_text().splitlines()]
    assert firsts["raw"] == [q for q, _ in problems]
    assert firsts["forced"] == firsts["chat"] == [TEMPLATED.format(q=q) for q, _ in problems]


def test_csv_cells_stay_text_and_missing_columns_are_absent(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,answer,id\n1+1=,007,001\n2+2=,3.10,\n3+3=,None,x\n")
    ex = load_examples(str(path), DataConfig(), "train")
    assert [(e.answer, e.id) for e in ex] == [("007", "001"), ("3.10", ""), ("None", "x")]
    mixed = tmp_path / "m.jsonl"
    mixed.write_text(json.dumps({"prompt": "a", "answer": 1, "id": "first"}) + "\n" + json.dumps({"prompt": "b", "answer": 2})
                     + "\n")
    assert [e.id for e in load_examples(str(mixed), DataConfig(), "train")] == ["first", "data-1"]


def test_two_turn_eval_on_a_tokenizer_without_template_is_one_line(base_model, capsys):
    code = main(["eval", base_model, "--data", "arith", "--n", "4", "--turns", "2", "--k", "2", "--temperature", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "has no chat template" in err[0], err


def test_second_turn_instruction_renders_with_the_chat_template_kwargs(tok):
    eos = tok.eos_token
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}" + eos + "{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{{ prefix }}{% endif %}")
    plain, primed = instruction_ids(tok, "Fix it."), instruction_ids(tok, "Fix it.", prefix="Sure:")
    assert tok.decode(plain) == f"<|user|>Fix it.{eos}<|assistant|>"
    assert tok.decode(primed) == f"<|user|>Fix it.{eos}<|assistant|>Sure:"
