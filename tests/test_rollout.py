from selfimprove.data import Example
from selfimprove.engines import Sampling
from selfimprove.engines.hf import HFEngine
from selfimprove.policy import load_model, load_tokenizer
from selfimprove.rollout import SCORE_INSTRUCTION, add_second_attempt, instruction_ids, instruction_text, make_traces


def test_instruction_ids_follow_the_chat_template(mini_model):
    tok = load_tokenizer(mini_model)
    ids = instruction_ids(tok, "Check again.")
    assert tok.decode(ids) == "<|user|>Check again.<|end|><|assistant|>"
    assert instruction_text("reask", "12+35=") == "12+35="
    assert instruction_text("score", "q") == SCORE_INSTRUCTION


def test_score_presets_are_the_papers_appendix_c_text_in_full():
    """Kumar et al. (arXiv 2409.12917) appendix C, verbatim, the answer-format sentence included."""
    assert instruction_text("score", "q") == (
        "There might be an error in the solution above because of lack of understanding of the question. Please "
        "correct the error, if any, and rewrite the solution. Only output the final solution! At the end of the "
        "Solution, when you give your final answer, write it in the form \"Final Answer: The final answer is "
        "$answer$. I hope it is correct.\"")
    assert instruction_text("score_code", "q") == (
        "There might be an error in the code above because of lack of understanding of the question. Please "
        "correct the error, if any, and rewrite the solution. Only output the final correct Python program!")
    assert instruction_text("Recheck {question}", "7*8=") == "Recheck 7*8="  # any other text is the instruction


def test_second_attempt_is_built_on_token_ids(mini_model):
    model, tok = load_model(mini_model), load_tokenizer(mini_model)
    engine = HFEngine(model, tok, seed=0)
    exs = [Example("a", [{"role": "user", "content": "12+35="}], "47", "arith"),
           Example("b", [{"role": "user", "content": "7*8="}], "56", "arith")]
    p_ids = [tok(tok.apply_chat_template(e.prompt, tokenize=False, add_generation_prompt=True),
                 add_special_tokens=False)["input_ids"] for e in exs]
    sampling = Sampling(n=2, max_new_tokens=6)
    traces = make_traces(exs, p_ids, engine.generate(p_ids, sampling), tok, tag="t")
    first_ids = [list(tr.token_ids) for tr in traces]
    add_second_attempt(engine, tok, traces, "reask", sampling)
    for tr, before in zip(traces, first_ids):
        assert [t.role for t in tr.turns] == ["user", "assistant", "user", "assistant"]
        assert [t.trainable for t in tr.turns] == [False, True, False, True]
        instr = tr.turns[2]
        assert tr.token_ids[: len(before)] == before  # turn 1 is kept token for token
        assert tok.decode(instr.token_ids).endswith(f"<|user|>{tr.prompt[-1]['content']}<|end|><|assistant|>")
        assert len(tr.turns[3].logprobs) == len(tr.turns[3].token_ids) >= 1
