"""A straightforward greedy speculative-decoding loop for tests: no KV cache, nothing clever.

Each iteration: the draft proposes up to k tokens one at a time by argmax over the whole sequence;
the target scores sequence + proposals in one forward; accept the longest agreeing prefix, then
append the target's own next token. Stops at EOS or max_new_tokens like `generate`.
"""

from __future__ import annotations

import torch

from specprof.core.simulation import ngram


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


class AssistedGeneration:
    """transformers' assisted generation at a constant draft length k (no confidence threshold), with
    the target's forward passes counted: the iterations the profile predicts."""

    def __init__(self, target_model, assistant, eos: list[int]):
        config = assistant.generation_config
        config.num_assistant_tokens_schedule = "constant"
        config.assistant_confidence_threshold = 0.0
        self.target, self.assistant, self.eos, self.calls = target_model, assistant, eos, []
        self.hook = target_model.register_forward_hook(lambda *a: self.calls.append(1))

    def run(self, prompt: list[int], k: int, max_new_tokens: int) -> tuple[list[int], int]:
        """(the generated tokens, target forward passes) at draft length k."""
        ids = torch.tensor([prompt])
        self.assistant.generation_config.num_assistant_tokens = k
        self.calls.clear()
        output = self.target.generate(ids, attention_mask=torch.ones_like(ids), assistant_model=self.assistant,
                                      max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self.eos,
                                      pad_token_id=self.eos[0])
        return output[0, ids.shape[1]:].tolist(), len(self.calls)

    def close(self) -> None:
        self.hook.remove()
