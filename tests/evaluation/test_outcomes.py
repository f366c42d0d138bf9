import json
import re

import pytest

from selfimprove.cli import main


def test_two_turn_eval_and_offline_metrics_agree(tmp_path, capsys, mini_model):
    out, traces, plot = tmp_path / "m.json", tmp_path / "t.jsonl", tmp_path / "p.png"
    code = main(["eval", mini_model, "--data", "arith", "--turns", "2", "--k", "3", "--n", "12", "--temperature", "1.0",
                 "--max-new-tokens", "8", "--out", str(out), "--traces", str(traces), "--plot", str(plot)])
    assert code == 0 and plot.is_file()
    m = json.loads(out.read_text())
    for key in ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i", "cl", "cs", "rss", "n_problems", "k",
                "pass_at_k_t1", "pass_at_k_t2", "edit_ratio"):
        assert key in m, key
    assert m["n_problems"] == 12 and m["k"] == 3
    assert m["delta"] == pytest.approx(m["delta_i2c"] - m["delta_c2i"])
    assert len(traces.read_text().splitlines()) == 36
    again = tmp_path / "again.json"
    assert main(["metrics", str(traces), "--out", str(again)]) == 0
    assert json.loads(again.read_text()) == m


def test_minimal_rows_with_uneven_groups(tmp_path):
    f = tmp_path / "rows.jsonl"
    rows = [("a", 1, 1), ("a", 1, 0), ("a", 0, 1), ("a", 0, 0), ("b", True, True), ("b", False, False)]
    f.write_text("\n".join(json.dumps({"problem": p, "correct1": a, "correct2": b}) for p, a, b in rows))
    out = tmp_path / "m.json"
    assert main(["metrics", str(f), "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["acc_t1"] == pytest.approx(0.5) and m["acc_t2"] == pytest.approx(0.5)
    assert m["cl"] == pytest.approx((0.25 + 0.5) / 1.0) and m["k"] == [2, 4]
    assert m["rss"] == pytest.approx(0.5)


@pytest.mark.parametrize("line,pattern", [
    ('{"problem": "a", "correct1": 1}', r"line 2 has no 'correct2' field"),
    ('{"problem": "a", "correct1": 1, "correct2": "yes"}', r"line 2: 'correct2' is 'yes', not a truth value"),
    ('{"problem": "a", "correct1": 2, "correct2": 0}', r"line 2: 'correct1' is 2, not a truth value"),
    ('{"id": "x", "group_id": "g", "turns": [{"role": "assistant", "reward": 1.0}]}', r"line 2: a trace needs two assistant turns, it has 1"),
    ('{oops', r"line 2 is not valid JSON"),
])
def test_malformed_lines_are_named(tmp_path, capsys, line, pattern):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"problem": "a", "correct1": 1, "correct2": 0}\n' + line + "\n")
    assert main(["metrics", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(pattern, err), err


def test_eval_bad_inputs(tmp_path, capsys, mini_model):
    assert main(["eval", mini_model, "--data", "arith", "--turns", "2", "--k", "0"]) == 2
    assert "--k must be >= 1, got 0" in capsys.readouterr().err
    noans = tmp_path / "q.jsonl"
    noans.write_text('{"prompt": "1+1="}\n')
    assert main(["eval", mini_model, "--data", "arith", "--data", str(noans)]) == 2
    assert "row 1 has no answer column 'answer'" in capsys.readouterr().err
