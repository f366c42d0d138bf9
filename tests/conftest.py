"""Shared fixtures: a quickly built tiny-world model, recipe files on top of one small base, and traces."""

import json
import os
import shutil

# before anything imports huggingface_hub, which reads these once
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import yaml  # noqa: E402

from selfimprove.tiny.model import TinySpec, build_tiny  # noqa: E402
from selfimprove.trace import Trace, Turn  # noqa: E402

# a small on-policy recipe on the synthetic arith task; tests change sections, never copy it
BASE_RECIPE = {
    "data": {"train": "arith"},
    "generation": {"n": 4, "max_new_tokens": 5},
    "rewards": [{"fn": "number_format"}, {"fn": "math_correct"}],
    "algorithm": {"name": "nft"},
    "train": {"steps": 3, "prompts_per_step": 4, "micro_batch_size": 8, "lr": 1.0e-3},
    "eval": {"n": 16, "reward": "math_correct", "max_new_tokens": 5},
    "log": {"name": "run", "every": 1, "progress": False},
}


@pytest.fixture(scope="session")
def mini_model(tmp_path_factory):
    """A quickly built tiny-world model (same tokenizer and architecture, 40 warm-start steps)."""
    out = tmp_path_factory.mktemp("models") / "mini"
    build_tiny(out, TinySpec(warm_steps=40, warm_batch=64), log=lambda *a: None)
    return str(out)


@pytest.fixture(scope="session")
def base_model(mini_model, tmp_path_factory):
    """The mini model with its chat template removed: a base model's tokenizer (read-only in tests)."""
    base = tmp_path_factory.mktemp("base") / "m"
    shutil.copytree(mini_model, base)
    cfg_path = base / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    for extra in base.glob("chat_template.*"):
        extra.unlink()
    return str(base)


@pytest.fixture
def write_recipe(tmp_path, mini_model):
    """write_recipe(name, section={key: value}, ...) -> the path of BASE_RECIPE with those keys changed
    (a section given as None is dropped), on the mini model, logging under tmp_path/runs."""

    def write(name: str = "r", **sections):
        recipe = {"model": {"path": mini_model}, **{k: dict(v) if isinstance(v, dict) else v
                                                     for k, v in BASE_RECIPE.items()}}
        recipe["log"]["out"] = str(tmp_path / "runs")
        for section, keys in sections.items():
            if keys is None:
                recipe.pop(section, None)
            elif isinstance(keys, dict) and isinstance(recipe.get(section), dict):
                recipe[section].update(keys)
            else:
                recipe[section] = keys
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return path

    return write


def make_trace(text: str = "4", *, group: str = "g", idx: int = 0, reward: float = 0.0, answer: str | None = None,
               prompt: str = "2+2=", prompt_ids=(1, 2), completion_ids=(3,), logprobs=None, **fields) -> Trace:
    """A single-turn trace built by hand: a non-trainable prompt turn, then the trainable completion."""
    ids = list(completion_ids)
    return Trace(id=f"{group}-{idx}", group_id=group, task="t", prompt=[{"role": "user", "content": prompt}],
                 turns=[Turn("user", prompt, list(prompt_ids)),
                        Turn("assistant", text, ids, logprobs if logprobs is not None else [0.0] * len(ids),
                             trainable=True, finish_reason="stop")],
                 answer=answer, reward=reward, **fields)
