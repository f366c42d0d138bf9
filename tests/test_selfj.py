"""Self-J (algorithms.md section 4): labels, views, scoring, evaluation, training, the reward and the CLI."""

import json
import math
from pathlib import Path

import pytest

from selfimprove import selfj as sj
from selfimprove.config import load_recipe
from selfimprove.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/selfj/tiny_arith.yaml"


def small_recipe(model, out, *extra):
    return load_recipe(RECIPE, [f"model.path={model}", f"log.out={out}", "log.name=run", "log.progress=false",
                                "algorithm.n_train_questions=12", "algorithm.n_eval_questions=8",
                                "algorithm.n_answers=2", "algorithm.epochs=2", "algorithm.batch_size=8",
                                "train.micro_batch_size=4", "train.warmup_steps=0", *extra])


# --------------------------------------------------------------------------- labels and views


def test_label_formula_numbers():
    assert sj.combine_label(9.0, 1.0) == 9 and sj.combine_label(0.0, 0.0) == 0
    # z = (0.5 * 3/9 + 0.5 * 0.7) = 0.51667 -> 9z = 4.65 -> 5
    assert sj.combine_label(3.0, 0.7) == 5
    assert sj.combine_label(0.0, 1.0) == 5  # 9z = 4.5: halves round up
    assert sj.combine_label(9.0, -0.8) == sj.combine_label(9.0, 0.0) == 5  # a negative cosine counts as 0
    assert sj.combine_label(6.4, 0.1, w_self=1.0, w_cos=0.0) == 6  # self-evaluation alone
    assert sj.combine_label(0.0, 0.3, w_self=0.0, w_cos=2.0) == 3  # cosine alone: 2.7 -> 3


def test_binning_edges():
    # label k covers 9z in [k - 0.5, k + 0.5)
    eps = 1e-9
    assert sj.combine_label(0.5 - eps, 0.0, 1.0, 0.0) == 0
    assert sj.combine_label(0.5, 0.0, 1.0, 0.0) == 1
    assert sj.combine_label(8.5 - eps, 0.0, 1.0, 0.0) == 8
    assert sj.combine_label(8.5, 0.0, 1.0, 0.0) == 9
    assert sj.combine_label(9.0, 1.0000002) == 9  # float noise above cosine 1 stays in range
    assert {sj.combine_label(z1, c) for z1 in (0, 4.5, 9) for c in (-1, 0, 0.5, 1)} <= set(range(10))


def test_views_render_with_and_without_reference(mini_model):
    from selfimprove.policy import load_tokenizer

    tok = load_tokenizer(mini_model)
    t, s = (sj.render_views(tok, tpl, ["23+45="], ["68"], refs) for tpl, refs in
            ((sj.TEACHER_TEMPLATE, ["68"]), (sj.STUDENT_TEMPLATE, None)))
    assert tok.decode(t[0]) == "<|user|>rate 0 to 9: 23+45= 68 reference 68<|end|><|assistant|>"
    assert tok.decode(s[0]) == "<|user|>rate 0 to 9: 23+45= 68<|end|><|assistant|>"
    assert len(t[0]) < 40 and len(s[0]) < len(t[0])  # short enough for the 256-token tiny model
    assert sj.fill("{question}|{answer}", "a {x}", "{reference}") == "a {x}|{reference}"  # user braces survive
    assert sj.digit_token_ids(tok) == [tok.convert_tokens_to_ids(d) for d in "0123456789"]


def test_template_checks():
    assert sj.template_errors(sj.TEACHER_TEMPLATE, True, "t") == []
    assert sj.template_errors(sj.STUDENT_TEMPLATE, False, "s") == []
    assert "no {reference}" in sj.template_errors("{question} {answer}", True, "t")[0]
    assert "must not use {reference}" in sj.template_errors("{answer} {reference}", False, "s")[0]
    assert "no {answer}" in sj.template_errors("{question}", False, "s")[0]
    with pytest.raises(UserError, match="algorithm.student_template must not use"):
        load_recipe(RECIPE, ["algorithm.student_template={answer} {reference}"])


def test_judge_scores_shapes_and_probabilities(mini_model):
    from selfimprove.policy import load_model, load_tokenizer

    tok, model = load_tokenizer(mini_model), load_model(mini_model)
    qs, ans = ["23+45=", "12*3=", "90-17="], ["68", "36", "1"]
    for refs in (None, ["68", "36", "73"]):
        out = sj.judge_scores(model, tok, qs, ans, refs, batch_size=2)  # two batches, different lengths
        assert len(out) == 3
        for score, probs in out:
            assert len(probs) == 10 and math.isclose(sum(probs), 1.0, abs_tol=1e-5)
            assert 0.0 <= score <= 9.0 and math.isclose(score, sum(k * p for k, p in enumerate(probs)), abs_tol=1e-5)
    # batching and left padding do not change a row's score
    alone = sj.judge_scores(model, tok, qs[2:], ans[2:])[0][0]
    assert math.isclose(alone, sj.judge_scores(model, tok, qs, ans, batch_size=3)[2][0], abs_tol=1e-4)


# --------------------------------------------------------------------------- evaluation


def test_correlations_and_selective_accuracy_on_fixed_numbers():
    scores, correct = [1, 2, 3, 4], [0, 0, 1, 1]
    assert math.isclose(sj.pearson(scores, correct), 2 / math.sqrt(5), rel_tol=1e-9)  # 0.894427
    assert math.isclose(sj.spearman(scores, correct), 2 / math.sqrt(5), rel_tol=1e-9)  # tied ranks 1.5, 3.5
    assert math.isclose(sj.spearman([1, 2, 3, 4], [10, 20, 30, 40]), 1.0)
    sel = sj.selective_accuracy(scores, correct)
    # floor(4 x%) declined: 0, 0, 0, 1, 1, 2
    assert sel == {"decline_0": 0.5, "decline_10": 0.5, "decline_20": 0.5, "decline_30": 2 / 3,
                   "decline_40": 2 / 3, "decline_50": 1.0}
    assert sj.selective_accuracy([4, 3, 2, 1], correct)["decline_50"] == 0.0  # an inverted judge keeps the wrong ones


def test_constant_inputs_give_none_not_a_crash():
    assert sj.pearson([3, 3, 3], [0, 1, 1]) is None and sj.spearman([1, 2, 3], [1, 1, 1]) is None
    assert sj.pearson([1.0], [1.0]) is None
    rep = sj.judge_report([5.0, 5.0], [4, 6], [0, 1])
    assert rep["pearson_label"] is None and rep["pearson_correct"] is None
    assert rep["selective_accuracy"]["decline_50"] == 1.0  # ties keep order: the first answer is declined
    assert "pearson_correct" not in sj.judge_report([1.0, 2.0], [1, 2])  # no verifier, no correctness block


# --------------------------------------------------------------------------- training, reward, CLI


@pytest.fixture(scope="module")
def trained(mini_model, tmp_path_factory):
    from selfimprove.algorithms.selfj import train

    out = tmp_path_factory.mktemp("selfj")
    summary = train(small_recipe(mini_model, out), log=lambda *a: None)
    return summary, Path(summary["run_dir"])


def test_training_writes_summary_labels_and_a_loadable_judge(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = trained[1]
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["n_train_answers"] == 24 and on_disk["n_eval_answers"] == 16
    assert on_disk["steps"] == 6  # 2 epochs x ceil(24 / 8)
    for block in ("baseline", "judge"):
        b = on_disk[block]
        assert b["n"] == 16 and {"pearson_label", "spearman_label", "pearson_correct"} <= set(b)
        assert list(b["selective_accuracy"]) == [f"decline_{x}" for x in sj.DECLINE_PERCENTS]
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "ce_teacher", "ce_student", "kl"} <= set(metrics[0])
    row = json.loads((run / "labels_eval.jsonl").read_text().splitlines()[0])
    assert {"selfj.z1", "selfj.cos", "selfj.label", "selfj.correct", "selfj.baseline", "selfj.judge"} <= set(row["meta"])
    assert row["meta"]["selfj.label"] == sj.combine_label(row["meta"]["selfj.z1"], row["meta"]["selfj.cos"])
    assert sum(on_disk["train_label_counts"]) == 24
    model = AutoModelForCausalLM.from_pretrained(run / "judge")
    assert AutoTokenizer.from_pretrained(run / "judge").chat_template and model.config.model_type == "llama"
    assert (run / "config.yaml").is_file()


def test_pairs_end_with_label_digit_and_eos(mini_model):
    from selfimprove.algorithms.selfj import Config, encode_pairs
    from selfimprove.policy import load_tokenizer
    from selfimprove.trace import Trace, Turn

    tok = load_tokenizer(mini_model)
    tr = Trace("t", "g", "arith", [{"role": "user", "content": "2+2="}], [Turn("assistant", "4", [])], answer="4",
               meta={"selfj.label": 7})
    (teacher, student), = encode_pairs(tok, [tr], Config(), 256)
    assert teacher[-2:] == student[-2:] == [tok.convert_tokens_to_ids("7"), tok.eos_token_id]
    assert "reference 4" in tok.decode(teacher) and "reference" not in tok.decode(student)
    with pytest.raises(UserError, match="teacher view of 't' has"):
        encode_pairs(tok, [tr], Config(), 10)


def test_lora_training_saves_a_merged_judge(mini_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from selfimprove.algorithms.selfj import train

    recipe = small_recipe(mini_model, tmp_path, "model.lora_r=4", "algorithm.epochs=1",
                          "algorithm.n_train_questions=4", "algorithm.n_eval_questions=4")
    summary = train(recipe, log=lambda *a: None)
    judge = Path(summary["judge_dir"])
    assert not (judge / "adapter_config.json").exists()  # merged: a plain HF model folder
    assert AutoModelForCausalLM.from_pretrained(judge).num_parameters() > 0


def test_judge_model_reward_scores_in_unit_range(trained):
    from reward import REWARDS
    from selfimprove.trace import Trace, Turn

    judge = str(trained[1] / "judge")
    traces = [Trace(f"t{i}", "g", "arith", [{"role": "user", "content": q}], [Turn("assistant", a, [])], answer=r)
              for i, (q, a, r) in enumerate([("23+45=", "68", "68"), ("23+45=", "61", "68"), ("9*9=", "81", "81")])]
    values = REWARDS["judge_model"](traces, None, model=judge)
    assert len(values) == 3 and all(0.0 <= v <= 1.0 for v in values)
    raw = REWARDS["judge_model"](traces, None, model=judge, normalize=False)
    assert all(math.isclose(r / 9.0, v, abs_tol=1e-6) for r, v in zip(raw, values))
    assert traces[0].meta["judge_model.score"] == raw[0]
    with_ref = REWARDS["judge_model"](traces, None, model=judge, template=sj.TEACHER_TEMPLATE)
    assert len(with_ref) == 3 and with_ref != values


def test_cli_judge_writes_scores_and_views(trained, tmp_path, capsys):
    from selfimprove.cli import main

    rows = [{"question": "23+45=", "answer": "68"}, {"question": "23+45=", "answer": "61", "reference": "68"}]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["judge", str(trained[1] / "judge"), str(src), "--out", str(out)]) == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["view"] for g in got] == ["without", "with_reference"]
    assert all(len(g["probs"]) == 10 and 0 <= g["score"] <= 9 for g in got)
    assert math.isclose(got[1]["score"], sum(k * p for k, p in enumerate(got[1]["probs"])), abs_tol=1e-6)


def test_cli_judge_input_errors(tmp_path, capsys):
    from selfimprove.cli import main

    src = tmp_path / "in.jsonl"
    src.write_text('{"question": "1+1=", "answer": "2"}\n{"question": "2+2="}\n')
    assert main(["judge", "tiny", str(src)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: judge: {src} row 2 has no 'answer' field (a string)"
    src.write_text('{"question": "1+1=", "answer": "2"}\n{"question": \n')
    assert main(["judge", "tiny", str(src)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: judge: {src} line 2 is not valid JSON") and "\n" not in err
    assert main(["judge", "tiny", str(tmp_path / "none.jsonl")]) == 2
    assert "input file not found" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["/nonexistent/model", "sentence-transformers/no-such-model-xyz"])
def test_unloadable_embedding_model_is_one_line_exit_2(name, monkeypatch, capsys):
    from selfimprove.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["train", str(RECIPE), f"algorithm.embedding_model={name}", "algorithm.n_train_questions=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: selfj: cannot load embedding model '{name}'") and "\n" not in err
