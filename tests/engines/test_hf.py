import re

import pytest
import torch

from selfimprove.batch import collate, token_logprobs
from selfimprove.config import DataConfig, GenerationConfig, check_generation
from selfimprove.data import Example, load_examples
from selfimprove.engines import Sample, Sampling
from selfimprove.engines.hf import HFEngine, sample_token
from selfimprove.errors import UserError
from selfimprove.policy import load_model, load_tokenizer
from selfimprove.rollout import make_traces, sample


def load(path):
    return load_model(path), load_tokenizer(path)


def prompts(tok, qs=("12+35=", "7*8=", "99-10=")):
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
             for q in qs]
    return tok(texts, add_special_tokens=False)["input_ids"]


def test_n_samples_per_prompt_with_logprobs_matching_a_training_forward(mini_model):
    model, tok = load(mini_model)
    engine = HFEngine(model, tok, seed=0)
    p = prompts(tok)
    out = engine.generate(p, Sampling(n=4, temperature=1.0, max_new_tokens=6))
    assert [len(g) for g in out] == [4, 4, 4]
    for group in out:
        for s in group:
            assert 1 <= len(s.token_ids) <= 6 and len(s.logprobs) == len(s.token_ids)
            assert (s.finish_reason == "stop") == (s.token_ids[-1] == tok.eos_token_id)
            assert tok.eos_token_id not in s.token_ids[:-1]
    # the sampler's log-probs are pi(token) under the unmodified policy: a training forward agrees
    exs = [Example(str(i), [{"role": "user", "content": "q"}], None, "t") for i in range(3)]
    traces = make_traces(exs, p, out, tok, tag="t")
    batch = collate(traces, tok.pad_token_id)
    with torch.no_grad():
        lp = token_logprobs(model, batch)
    m = batch["mask"].bool()
    assert torch.allclose(lp[m], batch["old_logp"][m], atol=1e-4)


def test_greedy_matches_transformers_generate(mini_model):
    model, tok = load(mini_model)
    p = prompts(tok)
    ours = HFEngine(model, tok).generate(p, Sampling(n=1, temperature=0, max_new_tokens=6))
    for ids, group in zip(p, ours):
        ref = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=6, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
        if tok.eos_token_id in ref:
            ref = ref[: ref.index(tok.eos_token_id) + 1]
        assert group[0].token_ids == ref


def test_same_seed_same_samples(mini_model):
    model, tok = load(mini_model)
    p = prompts(tok)
    a = HFEngine(model, tok, seed=3).generate(p, Sampling(n=3, max_new_tokens=5))
    b = HFEngine(model, tok, seed=3).generate(p, Sampling(n=3, max_new_tokens=5))
    assert [[s.token_ids for s in g] for g in a] == [[s.token_ids for s in g] for g in b]


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    draws = {int(sample_token(logits, 1.0, 0.7, gen)) for _ in range(300)}
    assert draws == {0, 1}  # 0.5 + 0.3 reaches 0.7; tokens 2 and 3 are cut
    assert int(sample_token(logits, 0.0, 1.0, gen)) == 0


def test_every_end_of_turn_id_stops_generation(mini_model):
    model, tok = load(mini_model)
    one = tok.convert_tokens_to_ids("1")  # a frequent token stands in for a second end-of-turn id
    model.generation_config.eos_token_id = [tok.eos_token_id, one]
    engine = HFEngine(model, tok, seed=0)
    assert engine.stop_ids == sorted({tok.eos_token_id, one})
    out = engine.generate(prompts(tok, ("12+35=", "17+4=", "81-70=", "9*9=")), Sampling(n=8, max_new_tokens=6))
    ends = [s.token_ids[-1] for g in out for s in g if s.finish_reason == "stop"]
    assert one in ends  # generation did stop at the second id
    for g in out:
        for s in g:
            assert all(t not in engine.stop_ids for t in s.token_ids[:-1])
            assert (s.finish_reason == "stop") == (s.token_ids[-1] in engine.stop_ids)


def test_inverse_cdf_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]])).repeat(1000, 1)
    u = (torch.arange(1000, dtype=torch.float32) + 0.5) / 1000  # an even grid of uniforms
    counts = torch.bincount(sample_token(logits, 1.0, 1.0, None, u), minlength=3).tolist()
    assert counts == [200, 500, 300]
    top = sample_token(logits, 1.0, 0.6, None, u)  # top-p 0.6 keeps 0.5 and 0.3, renormalised
    assert torch.bincount(top, minlength=3).tolist() == [0, 625, 375]


def test_seeded_samples_do_not_depend_on_batching(mini_model):
    tok = load_tokenizer(mini_model)
    engine = HFEngine(load_model(mini_model), tok, seed=0)
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                       tokenize=False) for q in ("12+34=", "5*6=", "99-1=", "7+8=")]
    ids = tok(prompts, add_special_tokens=False)["input_ids"]
    sp = Sampling(n=3, temperature=1.0, max_new_tokens=6, batch_size=12)
    together = engine.generate(ids, sp, seeds=[11, 12, 13, 14])
    halves = engine.generate(ids[:2], Sampling(n=3, temperature=1.0, max_new_tokens=6, batch_size=3), seeds=[11, 12]) \
        + engine.generate(ids[2:], sp, seeds=[13, 14])
    assert [[s.token_ids for s in g] for g in together] == [[s.token_ids for s in g] for g in halves]
    for g1, g2 in zip(together, halves):
        for a, b in zip(g1, g2):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    other = engine.generate(ids, sp, seeds=[21, 22, 23, 24])
    assert [[s.token_ids for s in g] for g in other] != [[s.token_ids for s in g] for g in together]


class EchoEngine:  # the README's "Adding an engine" example
    generator = None

    def generate(self, prompts, sampling, seeds=None):
        return [[Sample([p[-1]], [0.0], "length") for _ in range(sampling.n)] for p in prompts]

    def load_weights(self): ...

    def sleep(self): ...

    def wake(self): ...

    def close(self): ...


def test_any_object_with_the_engine_methods_is_an_engine(mini_model):
    tok = load_tokenizer(mini_model)
    examples = load_examples("arith", DataConfig(), "test")[:3]
    traces = sample(EchoEngine(), tok, examples, Sampling(n=2), tag="e", max_prompt_tokens=64)
    assert [t.id for t in traces] == ["e-0-0", "e-0-1", "e-1-0", "e-1-1", "e-2-0", "e-2-1"]
    assert all(t.completion.token_ids == [t.turns[0].token_ids[-1]] and t.completion.trainable for t in traces)


def test_top_k_and_min_p_filter_before_sampling():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(1000, 1)
    u = (torch.arange(1000, dtype=torch.float32) + 0.5) / 1000
    top2 = sample_token(logits, 1.0, 1.0, None, u, top_k=2)  # 0.5 and 0.3 renormalised: 0.625 / 0.375
    assert torch.bincount(top2, minlength=4).tolist() == [625, 375, 0, 0]
    # min_p 0.25: tokens below 0.25 x 0.5 = 0.125 go (0.05), the rest renormalised over 0.95
    minp = torch.bincount(sample_token(logits, 1.0, 1.0, None, u, min_p=0.25), minlength=4).tolist()
    assert minp[3] == 0 and minp[:3] == [round(1000 * p / 0.95) for p in (0.5, 0.3, 0.15)]
    # top_k 0 and -1 are off
    assert torch.equal(sample_token(logits, 1.0, 1.0, None, u, top_k=0), sample_token(logits, 1.0, 1.0, None, u, top_k=-1))


def test_top_k_1_sampling_is_greedy(mini_model):
    model, tok = load(mini_model)
    p = prompts(tok)
    engine = HFEngine(model, tok, seed=0)
    greedy = engine.generate(p, Sampling(n=1, temperature=0, max_new_tokens=8))
    sampled = engine.generate(p, Sampling(n=4, temperature=1.5, top_k=1, max_new_tokens=8), seeds=[1, 2, 3])
    unfiltered = engine.generate(p, Sampling(n=4, temperature=1.5, max_new_tokens=8), seeds=[1, 2, 3])
    for g, s, free in zip(greedy, sampled, unfiltered):
        for x in s:
            assert x.token_ids == g[0].token_ids and x.logprobs == pytest.approx(g[0].logprobs, abs=1e-5)
    assert {tuple(x.token_ids) for g in unfiltered for x in g} != {tuple(g[0].token_ids) for g in greedy}


def test_a_stop_string_cuts_the_completion_after_it(mini_model):
    model, tok = load(mini_model)
    p = prompts(tok)
    engine = HFEngine(model, tok, seed=0)
    full = [g[0] for g in engine.generate(p, Sampling(n=1, temperature=0, max_new_tokens=8))]
    texts = [tok.decode(s.token_ids, skip_special_tokens=True) for s in full]
    # a two-character stop string that one completion contains (spread over two tokens) and another does not
    stop = next(t[i : i + 2] for t in texts for i in range(len(t) - 1) if sum(t[i : i + 2] in u for u in texts) == 1)
    cut = [g[0] for g in engine.generate(p, Sampling(n=1, temperature=0, max_new_tokens=8, stop=(stop,)))]
    for whole, s, text in zip(full, cut, texts):
        if stop in text:
            k = next(k for k in range(1, len(whole.token_ids) + 1) if stop in tok.decode(whole.token_ids[:k]))
            assert s.token_ids == whole.token_ids[:k] and s.finish_reason == "stop"
            assert tok.decode(s.token_ids).endswith(stop) and tok.eos_token_id not in s.token_ids
            assert s.logprobs == pytest.approx(whole.logprobs[:k], abs=1e-6)  # ids and log-probs cut alike
        else:
            assert s.token_ids == whole.token_ids and s.finish_reason == whole.finish_reason
    assert sum(stop in t for t in texts) == 1


def test_repetition_penalty_matches_transformers_and_ignores_padding(mini_model):
    model, tok = load(mini_model)
    p = prompts(tok, ("12+35=", "7*8=", "99-10=", "664+0=", "1+1="))
    engine = HFEngine(model, tok, seed=0)
    sp = Sampling(n=1, temperature=0, max_new_tokens=8, repetition_penalty=3.0)
    ours = engine.generate(p, sp)  # one padded batch
    plain = engine.generate(p, Sampling(n=1, temperature=0, max_new_tokens=8))
    for ids, group in zip(p, ours):
        ref = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=8, repetition_penalty=3.0,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
        if tok.eos_token_id in ref:
            ref = ref[: ref.index(tok.eos_token_id) + 1]
        assert group[0].token_ids == ref
    assert [g[0].token_ids for g in ours] != [g[0].token_ids for g in plain]
    seeded = Sampling(n=3, temperature=1.0, max_new_tokens=8, repetition_penalty=3.0)
    a, b = engine.generate(p, seeded, seeds=list(range(5))), engine.generate(p, seeded, seeds=list(range(5)))
    assert [[s.token_ids for s in g] for g in a] == [[s.token_ids for s in g] for g in b]
    free = engine.generate(p, Sampling(n=3, temperature=1.0, max_new_tokens=8), seeds=list(range(5)))
    assert [[s.token_ids for s in g] for g in a] != [[s.token_ids for s in g] for g in free]


@pytest.mark.parametrize("key, value, msg", [
    ("top_k", -2, "generation.top_k must be >= -1, got -2"),
    ("min_p", 1.5, "generation.min_p must be in [0, 1], got 1.5"),
    ("repetition_penalty", 0.0, "generation.repetition_penalty must be > 0, got 0.0"),
    ("stop", ["\n", ""], "generation.stop[1] is an empty string"),
])
def test_generation_option_ranges_are_one_line(key, value, msg):
    with pytest.raises(UserError, match="^" + re.escape(msg)):
        check_generation(GenerationConfig(**{key: value}))
    sp = Sampling.of(GenerationConfig(top_k=5, stop=["x"]), n=2)
    assert (sp.n, sp.top_k, sp.stop, sp.min_p) == (2, 5, ("x",), 0.0)


@pytest.mark.parametrize("temperature, stop, penalty", [(1.0, (), 1.0), (0.0, (), 1.0), (1.0, ("1",), 1.0),
                                                         (1.0, (), 1.3)])
def test_finished_rows_leave_the_batch_without_changing_any_sample(mini_model, temperature, stop, penalty):
    """Seeded and greedy decoding drop finished rows (and their KV cache) from the batch; every row's tokens,
    log-probs, finish reason and stop strings are those of decoding the whole batch to the end."""
    tok = load_tokenizer(mini_model)
    engine = HFEngine(load_model(mini_model), tok, seed=0)
    ids = prompts(tok, ("12+34=", "5*6=", "99-1=", "7+8=", "3*3=", "50-7="))
    sp = Sampling(n=4, temperature=temperature, max_new_tokens=12, stop=stop, repetition_penalty=penalty)
    seeds = [31, 32, 33, 34, 35, 36]
    compacted = engine.generate(ids, sp, seeds=seeds)
    engine.compact = False
    whole = engine.generate(ids, sp, seeds=seeds)
    rows = [(s.token_ids, s.finish_reason) for g in compacted for s in g]
    assert rows == [(s.token_ids, s.finish_reason) for g in whole for s in g]
    lengths = [len(t) for t, _ in rows]
    assert min(lengths) < max(lengths)  # rows did finish at different steps: the batch shrank
    for g1, g2 in zip(compacted, whole):
        for a, b in zip(g1, g2):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
