"""Prompt lookup: worked examples, and the one-pass version equals the per-position lookup."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from specprof.core.simulation import ngram


def test_worked_examples():
    assert ngram.propose_next([5, 6, 7, 5, 6], 2) == 7  # [5, 6] occurred at 0..1, followed by 7
    assert ngram.propose_next([5, 6, 7, 5, 6], 1) == 7  # [6] occurred at 1, followed by 7
    assert ngram.propose_next([1, 2, 3], 3) == ngram.NO_PROPOSAL  # nothing recurs
    # The most recent occurrence wins: [9] is followed by 1 at 0 and by 2 at 2.
    assert ngram.propose_next([9, 1, 9, 2, 9], 1) == 2
    # Longer n-grams are tried first: [3, 9] recurs (→ 4) although [9] alone last preceded 5.
    assert ngram.propose_next([3, 9, 4, 9, 5, 3, 9], 2) == 4
    assert ngram.propose_next([3, 9, 4, 9, 5, 3, 9], 1) == 5


@given(st.lists(st.integers(0, 5), max_size=50), st.integers(1, 4), st.integers(0, 10))
def test_propose_all_equals_propose_next(tokens, max_ngram, start):
    start = min(start, len(tokens))
    got = ngram.propose_all(tokens, start, max_ngram).tolist()
    assert got == [ngram.propose_next(tokens[:t], max_ngram) for t in range(start, len(tokens))]
