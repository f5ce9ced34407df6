"""The engines' prompt lookups: vLLM's n-gram proposer and transformers' prompt lookup, by hand and
against vLLM's own function (a fixture it produced)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from specprof.core.simulation import kinds
from specprof.core.simulation.ngram import PromptLookup, VllmNgram
from specprof.errors import SpecprofError

FIXTURE = Path(__file__).parent / "fixtures" / "vllm_ngram_0.32.0.json"


def test_vllm_ngram_worked_examples():
    d = VllmNgram(1, 3)
    # [9, 7, 8] never occurred before; [7, 8] occurred at 0..1 and 3..4: the EARLIEST (0..1) wins,
    # followed by 9, 7, 8 → all three copied in one shot.
    assert d.propose([7, 8, 9, 7, 8, 5, 7, 8], 3) == [9, 7, 8]
    # k = 1 is the first token of the k = 3 proposal (the match does not depend on k).
    assert d.propose([7, 8, 9, 7, 8, 5, 7, 8], 1) == [9]
    # The longest match wins over an earlier shorter one: [1, 2, 3] occurs at 3..5 (→ 9);
    # [3] alone first occurred at 0 (→ 4), but n = 3 is tried first.
    assert d.propose([3, 4, 1, 1, 2, 3, 9, 1, 2, 3], 2) == [9, 1]
    # Fewer than k near the end of the context: [5] occurred at 1, followed by 6, 5 and then the
    # context ends → 2 tokens although k = 4.
    assert d.propose([4, 5, 6, 5], 4) == [6, 5]
    # An overlapping occurrence counts: [2, 2] at 0..1 is followed by 2 (the context's third token).
    assert d.propose([2, 2, 2], 3) == [2]
    # Nothing recurs → no proposal.
    assert d.propose([1, 2, 3], 3) == []
    # min_ngram: with n ≥ 2 only, the single recurring token [5] is not enough.
    assert VllmNgram(2, 3).propose([5, 1, 5], 2) == []
    assert VllmNgram(1, 3).propose([5, 1, 5], 2) == [1, 5]


def test_vllm_defaults_and_specs():
    assert kinds.block_proposer("vllm-ngram") == VllmNgram(5, 5)  # vLLM 0.32.0: 5 and 5 when neither is set
    assert kinds.block_proposer("vllm-ngram:3") == VllmNgram(3, 3)  # one set: the other takes its value
    assert kinds.block_proposer("vllm-ngram:1:4") == VllmNgram(1, 4)
    assert kinds.block_proposer("prompt-lookup", [2]) == PromptLookup(2, (2,))  # transformers: or 2
    assert kinds.block_proposer("prompt-lookup:3") == PromptLookup(3, ())
    assert kinds.block_proposer("ngram:3") is None
    for bad in ("vllm-ngram:4:2", "vllm-ngram:x", "vllm-ngram:1:2:3", "prompt-lookup:0", "prompt-lookup:a"):
        with pytest.raises(SpecprofError, match=f"--draft {bad}: "):
            kinds.block_proposer(bad)


def test_vllm_ngram_equals_vllms_own_function():
    cases = json.loads(FIXTURE.read_text())["cases"]
    assert sum(1 for c in cases if c["proposal"]) >= 20  # the fixture exercises matches, not only misses
    for c in cases:
        assert VllmNgram(c["min"], c["max"]).propose(c["context"], c["k"]) == c["proposal"], c


def test_prompt_lookup_worked_examples():
    d = PromptLookup(2, eos_ids=(0,))
    # [4, 5] occurred at 0..1, followed by 6, 4, 5: copied up to k.
    assert d.propose([4, 5, 6, 4, 5], 3) == [6, 4, 5]
    # Cut before the first EOS: [4, 5] → 7, 0, … → only [7].
    assert d.propose([4, 5, 7, 0, 4, 5], 3) == [7]
    # A candidate starting with EOS is empty, and no other match is tried (transformers breaks there).
    assert d.propose([4, 5, 0, 4, 5], 3) == []
    # max_matching_ngram_size 2, down to 1: [9, 5] never occurred, [5] did (at 1) → 6.
    assert d.propose([4, 5, 6, 9, 5], 1) == [6]


@given(st.lists(st.integers(0, 4), max_size=40), st.integers(1, 3), st.integers(0, 2), st.integers(1, 8),
       st.integers(0, 12))
def test_every_start_equals_one_at_a_time(tokens, low, extra, k_max, start):
    start = min(start, len(tokens))
    for d in (VllmNgram(low, low + extra), PromptLookup(low + extra, (0,))):
        every = d.propose_every_start(tokens, start, k_max)
        assert every == [d.propose(tokens[:t], k_max) for t in range(start, len(tokens))]
        # the prefix property the per-k simulation relies on
        for t in range(start, len(tokens)):
            for k in range(1, k_max + 1):
                assert d.propose(tokens[:t], k) == every[t - start][:k]
