import csv
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selfimprove.config import DataConfig
from selfimprove.data import encode_prompts, get_task, load_examples
from selfimprove.errors import UserError
from selfimprove.policy import load_tokenizer

ROWS = [{"question": "1+1=", "solution": "2"}, {"question": "2+2=", "solution": "4"}]


def _write_all(tmp_path):
    j = tmp_path / "d.jsonl"
    j.write_text("\n".join(json.dumps(r) for r in ROWS))
    c = tmp_path / "d.csv"
    with open(c, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["question", "solution"])
        w.writeheader()
        w.writerows(ROWS)

    ds = datasets.Dataset.from_list(ROWS)
    pq = tmp_path / "d.parquet"
    ds.to_parquet(str(pq))
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": ds}).save_to_disk(str(folder))
    return [j, c, pq, folder]


def test_every_file_format_with_configured_columns(tmp_path):
    cfg = DataConfig(prompt_column="question", answer_column="solution", system_prompt="Be exact.")
    for path in _write_all(tmp_path):
        ex = load_examples(str(path), cfg, "train")
        assert [e.answer for e in ex] == ["2", "4"], path
        assert ex[0].prompt == [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "1+1="}]


def test_missing_column_file_and_bad_json(tmp_path):
    j = _write_all(tmp_path)[0]
    with pytest.raises(UserError, match=r"row 1 has no prompt column 'prompt' \(columns: question, solution\)"):
        load_examples(str(j), DataConfig(), "train")
    with pytest.raises(UserError, match=r"row 1 has no answer column 'answer'"):
        load_examples(str(j), DataConfig(prompt_column="question"), "train")
    no_answers = load_examples(str(j), DataConfig(prompt_column="question", answer_column=None), "train")
    assert [e.answer for e in no_answers] == [None, None]
    with pytest.raises(UserError, match="file not found"):
        load_examples(str(tmp_path / "nope.jsonl"), DataConfig(), "train")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n{oops\n')
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        load_examples(str(bad), DataConfig(), "train")


def test_chat_template_prompts(mini_model):
    tok = load_tokenizer(mini_model)
    ex = load_examples("arith", DataConfig(), "test")[:2]
    ids = encode_prompts(tok, ex, 64)
    assert tok.decode(ids[0]) == f"<|user|>{ex[0].prompt[0]['content']}<|end|><|assistant|>"
    with pytest.raises(UserError, match="more than data.max_prompt_tokens=3"):
        encode_prompts(tok, ex, 3)


def test_prompt_template_builds_prompts_from_columns(tmp_path):
    path = tmp_path / "mono.jsonl"
    path.write_text(json.dumps({"source": "hello", "target_language": "Chinese"}) + "\n"
                    + json.dumps({"source": "bye"}) + "\n")
    cfg = DataConfig(prompt_template="Translate the following text to {target_language}: \n{source}", answer_column=None)
    with pytest.raises(UserError, match=r"row 2 has no column 'target_language' used by data.prompt_template"):
        load_examples(str(path), cfg, "train")
    path.write_text(json.dumps({"source": "hello", "target_language": "Chinese"}) + "\n")
    (ex,) = load_examples(str(path), cfg, "train")
    assert ex.prompt == [{"role": "user", "content": "Translate the following text to Chinese: \nhello"}]
    assert ex.answer is None


def test_task_names_are_exact():
    assert get_task("arith").name == "arith" and get_task("arith:heldout").name == "arith"
    assert get_task("arith:train") is None and get_task("arithmetic") is None and get_task("d.jsonl") is None


def test_a_nested_answer_by_dotted_path_and_a_non_scalar_answer_is_one_line(tmp_path):
    """verl's Parquet: the reference sits in reward_model.ground_truth."""
    rows = [{"prompt": [{"role": "user", "content": "1+1="}], "data_source": "arith",
             "reward_model": {"style": "rule", "ground_truth": "2"}, "extra_info": {"index": 0}}]
    path = tmp_path / "verl.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    examples = load_examples(str(path), DataConfig(answer_column="reward_model.ground_truth"), "train")
    assert examples[0].answer == "2" and examples[0].columns["data_source"] == "arith"
    with pytest.raises(UserError, match=r"'reward_model' holds a dict, not a single answer; name the field inside "
                                        r"it \(e.g. 'reward_model.ground_truth'\)"):
        load_examples(str(path), DataConfig(answer_column="reward_model"), "train")
    with pytest.raises(UserError, match=r"row 1 has no answer column 'reward_model.truth' \(reward_model has: style, "
                                        r"ground_truth\)"):
        load_examples(str(path), DataConfig(answer_column="reward_model.truth"), "train")
