"""The bare source text travels with each example (data.source_column) and reaches source-based rewards:
COMET-Kiwi gets it as `src` (never the filled instruction prompt) and never sees gated replies."""

from types import SimpleNamespace

import pytest

from reward import RewardContext, build_rewards, score, translation
from selfimprove.config import DataConfig, RewardSpec
from selfimprove.data import load_examples, rows_to_examples
from selfimprove.errors import UserError
from selfimprove.rollout import make_traces
from selfimprove.trace import Trace, dump_jsonl, load_jsonl

TEMPLATE = "Translate the following text to {target_language}: \n{source}"
ROWS = [{"source": "Der Hund schläft.", "target_language": "English"},
        {"source": "Die Katze isst.", "target_language": "English"},
        {"source": "Es regnet.", "target_language": "English"}]
REPLIES = ["<think>ok</think> <answer>The dog sleeps.</answer>",
           "no tags at all: the format gate fails",
           "<think>hm</think> <answer>It rains.</answer>"]


class StandInQE:
    """COMET-Kiwi's `predict` interface; records every batch it is sent and scores len(mt) / 100."""

    def __init__(self):
        self.sent = []

    def predict(self, data, batch_size, gpus, progress_bar):
        self.sent.append([dict(d) for d in data])
        return SimpleNamespace(scores=[len(d["mt"]) / 100 for d in data])


class FakeTok:
    def decode(self, ids, skip_special_tokens=False):
        return REPLIES[ids[0]] if skip_special_tokens else "PROMPT"


@pytest.fixture
def qe(monkeypatch):
    model = StandInQE()
    monkeypatch.setattr(translation, "_comet", lambda name: model)
    return model


def sampled(examples):
    samples = [[SimpleNamespace(token_ids=[i], logprobs=[0.0], finish_reason="stop")] for i in range(len(examples))]
    return make_traces(examples, [[9]] * len(examples), samples, FakeTok(), tag="s")


def examples(**data):
    cfg = DataConfig(prompt_template=TEMPLATE, answer_column=None, **data)
    return rows_to_examples(ROWS, "rows.jsonl", cfg)


def test_the_source_column_is_read_before_templating_and_kept_on_traces(tmp_path):
    exs = examples(source_column="source")
    assert exs[0].prompt[-1]["content"] == "Translate the following text to English: \nDer Hund schläft."
    assert [ex.source for ex in exs] == [r["source"] for r in ROWS]
    trs = sampled(exs)
    assert [tr.source for tr in trs] == [r["source"] for r in ROWS]
    dump_jsonl(trs, tmp_path / "t.jsonl")
    assert [tr.source for tr in load_jsonl(tmp_path / "t.jsonl")] == [r["source"] for r in ROWS]
    assert [ex.source for ex in examples()] == [None, None, None]  # default: none


def test_comet_gets_the_bare_source_and_never_gated_replies(qe):
    trs = sampled(examples(source_column="source"))
    specs = [RewardSpec(fn="think_format", weight=0.0),
             RewardSpec(fn="comet_kiwi", weight=1.0, kwargs={"extract": "answer", "only_if": "think_format"})]
    score(trs, build_rewards(specs), RewardContext())
    assert qe.sent == [[{"src": "Der Hund schläft.", "mt": "The dog sleeps."},
                        {"src": "Es regnet.", "mt": "It rains."}]]
    assert [tr.rewards["comet_kiwi"] for tr in trs] == [0.15, None, 0.09]
    assert [tr.reward for tr in trs] == [0.15, 0.0, 0.09]


def test_a_gate_value_below_one_is_not_sent(qe):
    trs = sampled(examples(source_column="source"))
    for tr, gate in zip(trs, [1.0, 1.0, 0.5]):
        tr.rewards["fmt"] = gate
    out = translation.comet_kiwi(trs, only_if="fmt")  # extract none: the whole reply is the translation
    assert [d["src"] for d in qe.sent[0]] == ["Der Hund schläft.", "Die Katze isst."]
    assert out[2] is None and out[1] == pytest.approx(len(REPLIES[1]) / 100)


def test_nothing_left_to_score_makes_no_call(qe):
    trs = sampled(examples(source_column="source"))
    assert translation.comet_kiwi(trs, only_if="missing") == [None, None, None]
    assert qe.sent == []


def test_comet_without_a_source_is_one_line(qe):
    trs = sampled(examples())
    with pytest.raises(UserError, match=r"comet_kiwi: trace s-0-0 has no source text; set data.source_column"):
        translation.comet_kiwi(trs)
    assert qe.sent == []


def test_a_missing_source_column_names_the_row():
    rows = [dict(ROWS[0]), {"target_language": "English", "text": "x"}]
    cfg = DataConfig(prompt_template="{target_language}", answer_column=None, source_column="source")
    with pytest.raises(UserError, match=r"rows.jsonl row 2: data.source_column 'source' must hold text "
                                        r"\(no such column; columns: target_language, text\)"):
        rows_to_examples(rows, "rows.jsonl", cfg)


def test_trl_rewards_receive_the_source_under_its_own_name():
    seen = {}

    def qe_reward(prompts, completions, source, **kwargs):
        seen["source"], seen["prompts"] = source, prompts
        return [0.0] * len(completions)

    trs = sampled(examples(source_column="source"))
    score(trs, build_rewards([RewardSpec(fn=qe_reward)]), RewardContext())
    assert seen["source"] == [r["source"] for r in ROWS]
    assert seen["prompts"][0] == "Translate the following text to English: \nDer Hund schläft."  # the whole prompt


def test_the_tiny_translate_task_sets_the_source():
    exs = load_examples("translate:heldout", DataConfig(train="translate"), "test")
    assert exs[0].source and exs[0].source in exs[0].prompt[-1]["content"]
    assert exs[0].source != exs[0].prompt[-1]["content"]


def test_a_trace_without_source_loads_from_old_jsonl(tmp_path):
    old = Trace(id="a", group_id="g", task="t", prompt=[], turns=[]).to_dict()
    del old["source"]
    assert Trace.from_dict(old).source is None
