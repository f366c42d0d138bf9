import json

import torch

from selfimprove.cli import main
from selfimprove.policy import load_model


def test_cct_mixture_from_own_attempts_then_sft(tmp_path, capsys, mini_model):
    out = tmp_path / "cct.jsonl"
    # number_format stands in for correctness: the quickly built test model gets few sums right
    code = main(["cct", mini_model, "--data", "arith", "--n", "20", "--k", "4", "--rows", "20", "--keep-share", "0.4",
                 "--reward", "number_format", "--max-new-tokens", "5", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 20 and sum(r["kind"] == "clt" for r in rows) == 8 and sum(r["kind"] == "cst" for r in rows) == 12
    r = rows[0]
    assert [m["role"] for m in r["prompt"]] == ["user", "assistant", "user"]
    assert r["prompt"][2]["content"] == r["prompt"][0]["content"]  # reask repeats the question
    assert r["completion"][0]["role"] == "assistant" and str(eval(r["prompt"][0]["content"].rstrip("="))) == r["completion"][0]["content"]
    model_out = tmp_path / "sft"
    assert main(["sft", mini_model, str(out), "--out", str(model_out), "--epochs", "1", "--batch-size", "8"]) == 0
    before, after = load_model(mini_model), load_model(str(model_out))
    assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))


def test_cct_bad_inputs(tmp_path, capsys, mini_model):
    assert main(["cct", mini_model, "--data", "arith", "--n", "4", "--k", "1", "--rows", "50", "--max-new-tokens", "5",
                 "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "are needed" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    assert main(["sft", mini_model, str(bad), "--out", str(tmp_path / "m")]) == 2
    assert "row 1 needs 'prompt' and 'completion'" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()
