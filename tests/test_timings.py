"""The cost model's timings time the very passes the speculative loop makes, shape for shape.

A timing pass of another shape prices something the loop never pays: the draft's catch-up step was
once timed with logits at both positions, while the loop keeps the last one only, and on SmolLM2
(2 CPU cores) that priced it at 40 ms instead of the 20 ms the loop spends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from specprof.engines.hf import drafts, measure, models, speculate


@contextmanager
def passes(model: torch.nn.Module) -> Iterator[set[tuple[int, int]]]:
    """Record (new tokens, logit rows kept) of every forward of `model` after its cache holds a prefix."""
    seen: set[tuple[int, int]] = set()
    forward = model.forward

    def spy(*args, **kwargs):
        cache = kwargs.get("cache") or kwargs.get("past_key_values")
        if cache is not None and cache.get_seq_length() > 0:
            seen.add((kwargs["input_ids"].shape[1], kwargs.get("logits_to_keep", 0)))
        return forward(*args, **kwargs)

    model.forward = spy
    try:
        yield seen
    finally:
        del model.forward


def test_timed_passes_are_the_loops_passes(tiny):
    cpu, f32 = torch.device("cpu"), torch.float32
    target = models.load_model(str(tiny["target"]), cpu, f32)
    draft = drafts.load_draft(str(tiny["target"]), target, cpu, f32)  # draft = target: every block accepted
    prompt = list(range(10, 30))
    k = 3

    with passes(target.model) as target_loop, passes(draft.model) as draft_loop:
        out = speculate.speculative_generate(target.model, speculate.proposer_for(draft), prompt, k=k,
                                             max_new_tokens=12, eos_ids=[])
    assert out.accepted == out.drafted  # so the draft caught up with 2 tokens after every block

    with passes(target.model) as target_timed:
        measure.forward_seconds(target.model, prompt, [k + 1])
    with passes(draft.model) as draft_timed:
        measure.draft_seconds(draft, prompt)

    assert target_timed == {(k + 1, k + 1)}  # verifying k proposals and the pending token: all rows
    assert target_timed <= target_loop
    assert draft_timed == {(1, 1), (2, 1)}  # a step, and the catch-up step: the last row only
    assert draft_timed <= draft_loop
