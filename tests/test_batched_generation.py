"""Batched, left-padded generation gives the continuations of one-prompt-at-a-time `generate`."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS  # noqa: I001

from specprof.core.records.corpus import load_corpus
from specprof.engines.hf import models
from specprof.engines.hf.generation import generate


def hf_generate(loaded, ids, max_new_tokens):
    prompt = torch.tensor([ids])
    eos = models.eos_token_ids(loaded)
    out = loaded.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new_tokens,
                                do_sample=False, eos_token_id=eos, pad_token_id=eos[0])
    return out[0, len(ids):].tolist()


def batched(loaded, encoded, max_new_tokens):
    eos = models.eos_token_ids(loaded)
    gen = generate(loaded.model, encoded, max_new_tokens=max_new_tokens, eos_ids=eos, pad_id=eos[0])
    return [gen.continuation[i, : gen.lengths[i]].tolist() for i in range(len(encoded))], gen


def test_tiny_batched_equals_unbatched(tiny, corpus):
    loaded = models.load_model(str(tiny["target"]), torch.device("cpu"), torch.float32)
    prompts = load_corpus(corpus)
    encoded = [models.encode_prompt(loaded.tokenizer, p, True) for p in prompts]
    assert max(map(len, encoded)) > 4 * min(map(len, encoded))  # very different lengths: lots of padding
    outputs, gen = batched(loaded, encoded, 40)
    for ids, out in zip(encoded, outputs):
        assert out == hf_generate(loaded, ids, 40)
    assert len(PROMPTS) == len(outputs)


@pytest.mark.realmodel
def test_smollm2_batched_equals_unbatched(smollm2):
    """Greedy SmolLM2 continuations, 8 prompts from 20 to 200 tokens in one batch, match `generate`.

    Near-ties can flip between batched and unbatched kernels even in fp32, so a difference is
    only accepted where the target's top-1/top-2 margin at the first differing position is tiny.
    """
    loaded = smollm2
    prompts = load_corpus("sample_prompts", limit=1)[:8]
    encoded = [models.encode_prompt(loaded.tokenizer, p, True) for p in prompts]
    outputs, gen = batched(loaded, encoded, 24)
    for i, (ids, out) in enumerate(zip(encoded, outputs)):
        expected = hf_generate(loaded, ids, 24)
        if out != expected:
            first = next(t for t, (a, b) in enumerate(zip(out, expected)) if a != b)
            assert gen.margin[i, first] < 1e-3, (prompts[i].id, first)
