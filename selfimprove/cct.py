"""CCT data (Yang et al., arXiv 2412.19513, section 5.4): confidence + critique SFT from the model's own attempts.

From (question, gold answer) data, the model samples k first attempts per question. A correct one
becomes a CLT example (context: question + that correct attempt + the instruction; target: the correct
answer, i.e. keep it); a wrong one becomes a CST example (context: question + that wrong attempt +
the instruction; target: the correct answer). The mixture holds `keep_share` CLT examples (the paper's
best share is about 40%) and optionally plain SFT examples (question -> answer, "SFT + CCT").
Rows use TRL's conversational prompt-completion format, so only the final answer is trained on:
    {"prompt": [user q, assistant a1, user instruction], "completion": [assistant target], "kind": "clt"}
"""

from __future__ import annotations

import random
from dataclasses import replace

from reward import score
from selfimprove.engines.base import Sampling
from selfimprove.errors import UserError
from selfimprove.rollout import CORRECT_THRESHOLD, instruction_text, is_correct, sample


def build_cct(engine, tokenizer, examples, rewards, ctx, n_rows: int, keep_share: float = 0.4, k: int = 4,
              instruction: str = "reask", plain_share: float = 0.0, sampling: Sampling | None = None,
              seed: int = 0, threshold: float = CORRECT_THRESHOLD) -> list[dict]:
    if not 0.0 <= keep_share <= 1.0 or not 0.0 <= plain_share < 1.0:
        raise UserError("keep_share must be in [0, 1] and plain_share in [0, 1)")
    if n_rows < 1 or k < 1:
        raise UserError("n_rows and k must be >= 1")
    sampling = sampling or Sampling(temperature=1.0, max_new_tokens=64)
    first = replace(sampling, n=k)
    traces = sample(engine, tokenizer, examples, first, tag="cct", max_prompt_tokens=10**9)
    score(traces, rewards, ctx)
    name = rewards[0].name
    clt, cst = [], []
    for i, tr in enumerate(traces):  # example-major: k traces per example
        ex = examples[i // k]
        right = is_correct(tr, name, threshold)
        prompt = list(ex.prompt) + [{"role": "assistant", "content": tr.completion.text},
                                    {"role": "user", "content": instruction_text(instruction, ex.prompt[-1]["content"])}]
        row = {"prompt": prompt, "completion": [{"role": "assistant", "content": ex.answer}],
               "kind": "clt" if right else "cst", "problem": ex.id}
        (clt if right else cst).append(row)
    rng = random.Random(seed)
    n_plain = round(plain_share * n_rows)
    n_clt = round(keep_share * (n_rows - n_plain))
    n_cst = n_rows - n_plain - n_clt
    if len(clt) < n_clt or len(cst) < n_cst:
        raise UserError(f"cct: the model's attempts gave {len(clt)} correct and {len(cst)} wrong first answers; "
                        f"{n_clt} and {n_cst} are needed (lower --rows, raise --k, or change --keep-share)")
    rows = rng.sample(clt, n_clt) + rng.sample(cst, n_cst)
    rows += [{"prompt": list(ex.prompt), "completion": [{"role": "assistant", "content": ex.answer}],
              "kind": "sft", "problem": ex.id} for ex in rng.choices(examples, k=n_plain)]
    rng.shuffle(rows)
    return rows
