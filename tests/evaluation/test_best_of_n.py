"""`selfimprove eval --pick`: best-of-k with a picker reward (a judge, a reward model, the self-judge)."""

import json

from selfimprove.cli import main


def test_a_perfect_picker_reaches_the_oracle_and_the_bounds_hold(tmp_path):
    out = tmp_path / "bon.json"  # the tiny model (22.8 % greedy): some of its samples are right
    assert main(["eval", "tiny", "--data", "arith", "--n", "24", "--k", "4", "--temperature", "1.0", "--max-new-tokens", "5",
                 "--pick", "math_correct", "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["k"] == 4 and m["problems"] == 24 and m["pick"] == "math_correct"
    assert m["picked"] == m["oracle"]  # the verifier as picker picks a right sample whenever there is one
    assert m["first_sample"] <= m["oracle"] and m["mean_sample"] <= m["oracle"] and m["oracle"] > 0
    out2 = tmp_path / "bon2.json"
    assert main(["eval", "tiny", "--data", "arith", "--n", "24", "--k", "4", "--temperature", "1.0", "--max-new-tokens", "5",
                 "--pick", "number_format", "--out", str(out2)]) == 0
    m2 = json.loads(out2.read_text())
    assert m2["oracle"] == m["oracle"] and m2["first_sample"] == m["first_sample"]  # the same samples (seeded)
    assert m2["picked"] <= m2["oracle"]


def test_bad_picker_options_are_one_line_errors(tmp_path, mini_model, capsys):
    assert main(["eval", mini_model, "--data", "arith", "--n", "4", "--k", "1", "--pick", "math_correct"]) == 2
    assert "--pick needs --k >= 2" in capsys.readouterr().err
    assert main(["eval", mini_model, "--data", "arith", "--n", "4", "--k", "2", "--pick", "judge_model", "--pick-kwargs", "{oops"]) == 2
    assert "pick_kwargs: expected a mapping, got '{oops'" in capsys.readouterr().err
    assert main(["eval", mini_model, "--data", "arith", "--n", "4", "--k", "2", "--pick", "judge_modle"]) == 2
    assert "did you mean 'judge_model'" in capsys.readouterr().err
