"""A trained Self-J judge at inference (reward.selfj): E[score], views, digit probabilities, templates."""

import math
from pathlib import Path

import pytest

from reward import selfj as sj
from selfimprove.errors import UserError
from selfimprove.policy import load_model, load_tokenizer
from selfimprove.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
TINY_TEACHER = "rate 0 to 9: {question} {answer} reference {reference}"  # the tiny recipe's short views
TINY_STUDENT = "rate 0 to 9: {question} {answer}"


def test_expected_score_worked_example():
    assert sj.expected_score([0, 0, 0, 0, 0, 0.1, 0.2, 0.4, 0.3, 0]) == pytest.approx(6.9)
    assert sj.expected_score([0, 0, 0, 0, 0, 0.05, 0.1, 0.2, 0.15, 0]) == pytest.approx(6.9)  # renormalised
    assert sj.expected_score([0] * 10) == 0.0


def test_expected_score_from_top_logprobs_ignores_non_digits():
    lps = {"7": math.log(0.4), "6": math.log(0.2), "8": math.log(0.3), "5": math.log(0.1), "The": math.log(0.5)}
    assert sj.expected_score_from_logprobs(lps) == pytest.approx(6.9)


def test_views_render_with_and_without_reference(mini_model):
    tok = load_tokenizer(mini_model)
    t, s = (sj.render_views(tok, tpl, ["23+45="], ["68"], refs) for tpl, refs in
            ((TINY_TEACHER, ["68"]), (TINY_STUDENT, None)))
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
        load_recipe(ROOT / "recipes/selfj/tiny_arith.yaml", ["algorithm.student_template={answer} {reference}"])


def test_judge_scores_shapes_and_probabilities(mini_model):
    tok, model = load_tokenizer(mini_model), load_model(mini_model)
    qs, ans = ["23+45=", "12*3=", "90-17="], ["68", "36", "1"]
    for refs in (None, ["68", "36", "73"]):
        tpl = TINY_TEACHER if refs else TINY_STUDENT
        out = sj.judge_scores(model, tok, qs, ans, refs, tpl, batch_size=2)  # two batches, different lengths
        assert len(out) == 3
        for score, probs in out:
            assert len(probs) == 10 and math.isclose(sum(probs), 1.0, abs_tol=1e-5)
            assert 0.0 <= score <= 9.0 and math.isclose(score, sum(k * p for k, p in enumerate(probs)), abs_tol=1e-5)
    # batching and left padding do not change a row's score
    alone = sj.judge_scores(model, tok, qs[2:], ans[2:], None, TINY_STUDENT)[0][0]
    assert math.isclose(alone, sj.judge_scores(model, tok, qs, ans, None, TINY_STUDENT, batch_size=3)[2][0],
                        abs_tol=1e-4)


def test_default_views_are_the_papers_and_a_judge_folder_carries_its_own(tmp_path):
    assert "[Question]\n{question}\n\n[Reference]\n{reference}\n\n[Answer]\n{answer}" in sj.TEACHER_TEMPLATE
    assert "{reference}" not in sj.STUDENT_TEMPLATE and sj.STUDENT_TEMPLATE.startswith("Please act as a precise judge")
    assert sj.judge_templates(str(tmp_path)) == (sj.TEACHER_TEMPLATE, sj.STUDENT_TEMPLATE)  # none saved: the paper's
    sj.save_templates(tmp_path, TINY_TEACHER, TINY_STUDENT)
    assert sj.judge_templates(str(tmp_path)) == (TINY_TEACHER, TINY_STUDENT)
    (tmp_path / sj.TEMPLATE_FILE).write_text("{not json")
    with pytest.raises(UserError, match="is not a valid template file"):
        sj.judge_templates(str(tmp_path))
