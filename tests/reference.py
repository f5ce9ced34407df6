"""A straightforward greedy speculative-decoding loop for tests: no KV cache, nothing clever.

Each iteration: the draft proposes up to k tokens one at a time by argmax over the whole sequence;
the target scores sequence + proposals in one forward; accept the longest agreeing prefix, then
append the target's own next token. Stops at EOS or max_new_tokens like `generate`.
"""

from __future__ import annotations

import torch

from specprof.core import ngram


@torch.inference_mode()
def greedy_speculative(target, propose, prompt: list[int], k: int, max_new_tokens: int, eos: set[int]):
    """Returns (output tokens, number of iterations = target forward passes)."""
    seq = list(prompt)
    out: list[int] = []
    iterations = 0
    while len(out) < max_new_tokens and not (out and out[-1] in eos):
        proposals = []
        for _ in range(min(k, max_new_tokens - len(out) - 1)):
            tok = propose(seq + proposals)
            if tok < 0:
                break
            proposals.append(tok)
        logits = target(torch.tensor([seq + proposals])).logits[0, len(seq) - 1 :]
        choice = logits.argmax(-1).tolist()  # target's token after seq, after each proposal
        iterations += 1
        accepted = 0
        while accepted < len(proposals) and proposals[accepted] == choice[accepted]:
            accepted += 1
        new = proposals[:accepted] + [choice[accepted]]
        for tok in new:
            if len(out) < max_new_tokens and not (out and out[-1] in eos):
                out.append(tok)
                seq.append(tok)
    return out, iterations


def model_proposer(draft):
    @torch.inference_mode()
    def propose(seq: list[int]) -> int:
        return int(draft(torch.tensor([seq])).logits[0, -1].argmax())

    return propose


def ngram_proposer(max_ngram: int):
    return lambda seq: ngram.propose_next(seq, max_ngram)
