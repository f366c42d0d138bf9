"""model.attn_implementation, model.revision and model.trust_remote_code reach every from_pretrained of the
policy (model, tokenizer; the reference is a copy of the loaded policy) and the vLLM engine's arguments."""

import pytest

from selfimprove import hub
from selfimprove.config import ModelConfig
from selfimprove.errors import UserError
from selfimprove.loop import run
from selfimprove.policy import load_model, model_options
from selfimprove.recipe import load_recipe


def test_the_tiny_model_loads_with_eager_attention(mini_model):
    model = load_model(mini_model, cfg=ModelConfig(path=mini_model, attn_implementation="eager"))
    assert model.config._attn_implementation == "eager"
    assert load_model(mini_model, cfg=ModelConfig(path=mini_model, attn_implementation="sdpa")).config._attn_implementation == "sdpa"


def test_an_unknown_attention_implementation_is_one_line():
    with pytest.raises(UserError, match=r"^model.attn_implementation must be one of eager, .*sdpa.*, got 'fast'$"):
        model_options(ModelConfig(attn_implementation="fast"))
    assert model_options(ModelConfig()) == {}  # nothing set: transformers' defaults
    assert model_options(ModelConfig(attn_implementation="kernels-community/flash-attn")) == {
        "attn_implementation": "kernels-community/flash-attn"}


def test_revision_and_trust_remote_code_reach_every_from_pretrained(tmp_path, mini_model, write_recipe, monkeypatch):
    calls = []
    original = hub.from_pretrained

    def recording(cls, path, what, **kwargs):
        calls.append((cls.__name__, {k: kwargs.get(k) for k in ("revision", "trust_remote_code", "attn_implementation")}))
        kwargs.pop("revision", None)  # a local folder has no revisions: the value reaching here is what counts
        return original(cls, path, what, **kwargs)

    monkeypatch.setattr(hub, "from_pretrained", recording)
    monkeypatch.setattr("selfimprove.policy.from_pretrained", recording)
    p = write_recipe(model={"revision": "0123abc", "trust_remote_code": True, "attn_implementation": "eager"},
                     algorithm={"name": "grpo", "kl_coef": 0.1}, eval=None, train={"steps": 1})
    run(load_recipe(p), log=lambda *a: None)
    want = {"revision": "0123abc", "trust_remote_code": True}
    assert ("AutoTokenizer", {**want, "attn_implementation": None}) in calls
    assert ("AutoModelForCausalLM", {**want, "attn_implementation": "eager"}) in calls
    assert all(kw["revision"] == "0123abc" for _, kw in calls)


def test_an_empty_revision_is_one_line(write_recipe):
    with pytest.raises(UserError, match="model.revision must be a branch, tag or commit, not empty$"):
        load_recipe(write_recipe(model={"revision": " "}))
