import json

from selfimprove.trace import Trace, Turn, dump_jsonl, load_jsonl


def make_trace():
    return Trace(
        id="s0-0-1", group_id="s0-0", task="arith", prompt=[{"role": "user", "content": "12+35="}],
        turns=[Turn("user", "<p>", [1, 2, 3]),
               Turn("assistant", "47", [20, 21, 2], [-0.1, -1 / 3, -2.5e-7], trainable=True, reward=1.0,
                    finish_reason="stop"),
               Turn("user", "Check again.", [5, 6]),
               Turn("assistant", "46", [20, 22, 2], [-0.3, -0.7, -0.01], trainable=True, reward=0.0)],
        answer="47", rewards={"math_correct": 1.0, "fmt": None}, reward=1.1, advantage=0.123456789,
        policy_version=3, meta={"nft.correct_rate": 0.25},
    )


def test_jsonl_round_trip_is_exact(tmp_path):
    tr = make_trace()
    path = tmp_path / "t.jsonl"
    dump_jsonl([tr, tr], path)
    back = load_jsonl(path)
    assert back == [tr, tr]
    assert back[0].turns[1].logprobs[1] == -1 / 3  # floats survive bit for bit
    assert len(path.read_text().splitlines()) == 2
    assert json.loads(path.read_text().splitlines()[0])["turns"][1]["trainable"] is True


def test_token_ids_concatenate_turns_and_completion_is_last_assistant():
    tr = make_trace()
    assert tr.token_ids == [1, 2, 3, 20, 21, 2, 5, 6, 20, 22, 2]
    assert tr.completion.text == "46"
