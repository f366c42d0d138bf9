"""Self-J judge training (the selfj program, algorithms.md section 4): the loss, training, the saved judge,
the judge_model reward and the judge CLI."""

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reward import REWARDS
from reward import selfj as sj
from selfimprove.cli import main
from selfimprove.errors import UserError
from selfimprove.evaluation.metrics import DECLINE_PERCENTS
from selfimprove.policy import load_tokenizer
from selfimprove.programs.judge_labels import combine_label
from selfimprove.programs.train_judge import Config, distill_kl, encode_pairs, selfj_loss, train
from selfimprove.recipe import load_recipe
from selfimprove.trace import Trace, Turn

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes/selfj/tiny_arith.yaml"
TINY_TEACHER = "rate 0 to 9: {question} {answer} reference {reference}"


def small_recipe(model, out, *extra):
    return load_recipe(RECIPE, [f"model.path={model}", f"log.out={out}", "log.name=run", "log.progress=false",
                                "algorithm.n_train_questions=12", "algorithm.n_eval_questions=8",
                                "generation.n=2", "train.epochs=2", "train.batch_size=8",
                                "train.micro_batch_size=4", "train.warmup_steps=0", *extra])


# --------------------------------------------------------------------------- the loss (kd.py)


def test_kl_worked_number_per_position():
    t = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]]))
    s = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]]))
    assert distill_kl(t, s).item() == pytest.approx(0.085123, abs=1e-6)


def test_no_gradient_reaches_the_teacher_view():
    t = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).requires_grad_(True)
    s = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).requires_grad_(True)
    distill_kl(t, s).backward()
    assert t.grad is None or torch.count_nonzero(t.grad) == 0
    assert torch.count_nonzero(s.grad) > 0


def test_total_loss_combines_the_three_terms():
    t = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    s = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    loss, parts = selfj_loss(t, s, torch.tensor([0]))
    expected = -math.log(0.7) + 0.3 * -math.log(0.5) + 2 * 0.085123
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert parts["kl"] == pytest.approx(0.085123, abs=1e-6)


# --------------------------------------------------------------------------- training, reward, CLI


@pytest.fixture(scope="module")
def trained(mini_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("selfj")
    summary = train(small_recipe(mini_model, out), log=lambda *a: None)
    return summary, Path(summary["run_dir"])


def test_training_writes_summary_labels_and_a_loadable_judge(trained):
    run = trained[1]
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["n_train_answers"] == 24 and on_disk["n_eval_answers"] == 16
    assert on_disk["steps"] == 6  # 2 epochs x ceil(24 / 8)
    for block in ("baseline", "judge"):
        b = on_disk[block]
        assert b["n"] == 16 and {"pearson_label", "spearman_label", "pearson_correct"} <= set(b)
        assert list(b["selective_accuracy"]) == [f"decline_{x}" for x in DECLINE_PERCENTS]
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "ce_teacher", "ce_student", "kl"} <= set(metrics[0])
    row = json.loads((run / "labels_eval.jsonl").read_text().splitlines()[0])
    assert {"selfj.z1", "selfj.cos", "selfj.label", "selfj.correct", "selfj.baseline", "selfj.judge"} <= set(row["meta"])
    assert row["meta"]["selfj.label"] == combine_label(row["meta"]["selfj.z1"], row["meta"]["selfj.cos"])
    assert sum(on_disk["train_label_counts"]) == 24
    model = AutoModelForCausalLM.from_pretrained(run / "judge")
    assert AutoTokenizer.from_pretrained(run / "judge").chat_template and model.config.model_type == "llama"
    assert sj.judge_templates(str(run / "judge"))[1] == "rate 0 to 9: {question} {answer}"  # its own views, saved
    assert (run / "config.yaml").is_file()


def test_pairs_end_with_label_digit_and_eos(mini_model):
    tok = load_tokenizer(mini_model)
    tr = Trace("t", "g", "arith", [{"role": "user", "content": "2+2="}], [Turn("assistant", "4", [])], answer="4",
               meta={"selfj.label": 7})
    cfg = Config(teacher_template=TINY_TEACHER, student_template="rate 0 to 9: {question} {answer}")
    (teacher, student), = encode_pairs(tok, [tr], cfg, 256)
    assert teacher[-2:] == student[-2:] == [tok.convert_tokens_to_ids("7"), tok.eos_token_id]
    assert "reference 4" in tok.decode(teacher) and "reference" not in tok.decode(student)
    with pytest.raises(UserError, match="teacher view of 't' has"):
        encode_pairs(tok, [tr], cfg, 10)


def test_lora_training_saves_a_merged_judge(mini_model, tmp_path):
    recipe = small_recipe(mini_model, tmp_path, "model.lora_r=4", "train.epochs=1",
                          "algorithm.n_train_questions=4", "algorithm.n_eval_questions=4")
    summary = train(recipe, log=lambda *a: None)
    judge = Path(summary["judge_dir"])
    assert not (judge / "adapter_config.json").exists()  # merged: a plain HF model folder
    assert AutoModelForCausalLM.from_pretrained(judge).num_parameters() > 0


def test_judge_model_reward_scores_in_unit_range(trained):
    judge = str(trained[1] / "judge")
    traces = [Trace(f"t{i}", "g", "arith", [{"role": "user", "content": q}], [Turn("assistant", a, [])], answer=r)
              for i, (q, a, r) in enumerate([("23+45=", "68", "68"), ("23+45=", "61", "68"), ("9*9=", "81", "81")])]
    values = REWARDS["judge_model"](traces, None, model=judge)
    assert len(values) == 3 and all(0.0 <= v <= 1.0 for v in values)
    raw = REWARDS["judge_model"](traces, None, model=judge, normalize=False)
    assert all(math.isclose(r / 9.0, v, abs_tol=1e-6) for r, v in zip(raw, values))
    assert traces[0].meta["judge_model.score"] == raw[0]
    with_ref = REWARDS["judge_model"](traces, None, model=judge, template=TINY_TEACHER)
    assert len(with_ref) == 3 and with_ref != values


def test_cli_judge_writes_scores_and_views(trained, tmp_path, capsys):
    rows = [{"question": "23+45=", "answer": "68"}, {"question": "23+45=", "answer": "61", "reference": "68"}]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["judge", str(trained[1] / "judge"), str(src), "--out", str(out)]) == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["view"] for g in got] == ["without", "with_reference"]
    assert all(len(g["probs"]) == 10 and 0 <= g["score"] <= 9 for g in got)
    assert math.isclose(got[1]["score"], sum(k * p for k, p in enumerate(got[1]["probs"])), abs_tol=1e-6)


def test_cli_judge_input_errors(tmp_path, capsys):
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
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["train", str(RECIPE), f"algorithm.embedding_model={name}", "algorithm.n_train_questions=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: selfj: cannot load embedding model '{name}'") and "\n" not in err
