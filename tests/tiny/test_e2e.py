"""The embedded tiny model and a short NFT run on it: real self-improvement, asserted in numbers."""

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from selfimprove.cli import main
from selfimprove.loop import run
from selfimprove.recipe import load_recipe
from selfimprove.tiny.model import ensure_tiny

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny():
    return str(ensure_tiny(log=lambda *a: None))  # cached after the first build (about 2.5 min on 2 cores)


@pytest.mark.slow
def test_tiny_model_loads_like_any_model_and_leaves_room_to_learn(tiny, tmp_path):
    model, tok = AutoModelForCausalLM.from_pretrained(tiny), AutoTokenizer.from_pretrained(tiny)
    assert model.config.model_type == "llama" and 0.5e6 < model.num_parameters() < 2e6
    text = tok.apply_chat_template([{"role": "user", "content": "12+35="}], tokenize=False, add_generation_prompt=True)
    assert tok.decode(tok(text)["input_ids"]) == text
    out = tmp_path / "eval.json"
    assert main(["eval", "tiny", "--data", "arith", "--n", "500", "--max-new-tokens", "16", "--out", str(out)]) == 0
    acc = json.loads(out.read_text())["accuracy"]
    assert 0.15 <= acc <= 0.70


@pytest.mark.slow
def test_nft_on_the_tiny_world_raises_held_out_accuracy(tiny, tmp_path):
    # the quickstart recipe, cut to a fixed 400 steps (about a minute) instead of its time budget
    recipe = load_recipe(ROOT / "recipes/quickstart.yaml",
                         ["train.steps=400", "train.max_seconds=0", f"log.out={tmp_path}", "log.progress=false"])
    summary = run(recipe, log=lambda *a: None)
    assert summary["n_eval"] == 500 and summary["steps"] == 400
    assert summary["accuracy_after"] - summary["accuracy_before"] >= 0.05, summary
    rows = [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[: len(rows) // 4], rows[-len(rows) // 4 :]
    assert sum(r["reward"] for r in last) / len(last) > sum(r["reward"] for r in first) / len(first)
