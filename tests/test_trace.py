"""Blocks from match vectors: worked by hand, then properties, then the chain estimate."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from specprof.core.simulation import trace

MATCH = [bool(int(c)) for c in "1101110"]


def blocks(match, k):
    return [(b.start, b.accepted, b.emitted) for b in trace.simulate_blocks(match, k)]


def test_worked_example_1101110():
    # k = 1: each block takes at most one match, then the target's token.
    #   s=0: m0=1 → accept 1, emit 2; s=2: m2=0 → accept 0, emit 1; s=3: m3=1 → 1, 2;
    #   s=5: m5=1 → 1, 2; s=7: end. 4 iterations for 7 tokens.
    assert blocks(MATCH, 1) == [(0, 1, 2), (2, 0, 1), (3, 1, 2), (5, 1, 2)]
    # k = 2: s=0: m0 m1 = 11 → accept 2, emit 3; s=3: m3 m4 = 11 → 2, 3; s=6: m6=0 → 0, 1.
    assert blocks(MATCH, 2) == [(0, 2, 3), (3, 2, 3), (6, 0, 1)]
    # k = 3: s=0: 11 then m2=0 → accept 2, emit 3; s=3: 111 → accept 3, emit 4 (ends at 7).
    assert blocks(MATCH, 3) == [(0, 2, 3), (3, 3, 4)]
    # k = 4: the run at s=3 is only 3 long, so k = 4 is the same as k = 3.
    assert blocks(MATCH, 4) == [(0, 2, 3), (3, 3, 4)]


def test_end_of_sequence_cuts_the_bonus_token():
    # All 3 tokens match: one block accepts 3 and emits 3 (the bonus token lies past the end).
    assert blocks([True, True, True], 4) == [(0, 3, 3)]
    assert blocks([True, True, True], 2) == [(0, 2, 3)]


def test_vectorised_counts_equal_worked_example():
    padded, lengths = trace.pad([np.array(MATCH, dtype=float)])
    c = trace.count_blocks_exact(padded, lengths, 4)
    assert c.iterations[0].tolist() == [4, 3, 2, 2]
    assert c.accepted[0].tolist() == [3, 4, 5, 5]
    assert c.emitted[0].tolist() == [7, 7, 7, 7]
    assert c.histogram[0, 1, :3].tolist() == [1, 0, 2]  # k = 2: one block accepted 0, two accepted 2


def test_proposals_stop_where_the_draft_had_nothing_to_propose():
    # match 1 0 1 1 0 0 1, nothing proposed at positions 1 and 5 (an n-gram lookup that found no match).
    # k = 2: s=0 accepts 1 and fails at 1, where nothing was proposed: 1 proposal; s=2 accepts 2: 2;
    # s=5 fails at once, nothing proposed: 0; s=6 accepts the last token: 2 (priced as k).
    match = np.array([[1, 0, 1, 1, 0, 0, 1]], dtype=float)
    none = np.array([[0, 1, 0, 0, 0, 1, 0]], dtype=bool)
    c = trace.count_blocks_exact(match, np.array([7]), 3, none)
    assert c.proposed[0, 1, :3].tolist() == [1, 1, 2]
    # k = 3: s=0: 1 proposal; s=2 accepts 2, then is rejected at 4 where a token was proposed: 3;
    # s=5: 0; s=6: 3.
    assert c.proposed[0, 2].tolist() == [1, 1, 0, 2]
    # Without the marks every block proposes k.
    assert trace.count_blocks_exact(match, np.array([7]), 3).proposed[0, 2].tolist() == [0, 0, 0, 4]


match_lists = st.lists(st.booleans(), min_size=0, max_size=60)


@given(match_lists, st.integers(1, 9))
def test_blocks_cover_the_sequence_exactly(match, k):
    bs = trace.simulate_blocks(match, k)
    position = 0
    for b in bs:
        assert b.start == position
        assert 0 <= b.accepted <= k
        assert all(match[b.start : b.start + b.accepted])
        position += b.emitted
    assert position == len(match)


@given(st.lists(match_lists, min_size=1, max_size=6), st.integers(1, 8))
def test_vectorised_equals_reference(rows, k_max):
    padded, lengths = trace.pad([np.array(r, dtype=float) for r in rows])
    c = trace.count_blocks_exact(padded, lengths, k_max)
    for i, r in enumerate(rows):
        for k in range(1, k_max + 1):
            bs = trace.simulate_blocks(r, k)
            assert c.iterations[i, k - 1] == len(bs)
            assert c.accepted[i, k - 1] == sum(b.accepted for b in bs)
            assert c.emitted[i, k - 1] == len(r)
            hist = np.bincount([b.accepted for b in bs], minlength=k + 1)
            assert c.histogram[i, k - 1, : k + 1].tolist() == hist.tolist()


@given(st.lists(match_lists, min_size=1, max_size=4), st.integers(1, 6), st.randoms(use_true_random=False))
def test_chain_estimate_with_certain_outcomes_is_exact(rows, k_max, rng):
    padded, lengths = trace.pad([np.array(r, dtype=float) for r in rows])
    none = (padded == 0) & np.array([[rng.random() < 0.5 for _ in range(padded.shape[1])] for _ in rows], dtype=bool)
    exact = trace.count_blocks_exact(padded, lengths, k_max, none)
    chain = trace.count_blocks_expected(padded, lengths, k_max, none)
    for name in ("iterations", "accepted", "emitted", "histogram", "proposed"):
        np.testing.assert_allclose(getattr(chain, name), getattr(exact, name))


@settings(max_examples=30)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=9), st.integers(1, 4))
def test_chain_estimate_equals_enumeration_over_independent_acceptances(probs, k):
    """When position t is accepted independently with probability probs[t], the chain's expectations
    are exact: average the exact trace over all 2^n match vectors, weighted by their probability."""
    n = len(probs)
    expected_iters = expected_accepted = 0.0
    expected_hist = np.zeros(k + 1)
    for outcome in itertools.product([False, True], repeat=n):
        weight = np.prod([p if o else 1 - p for p, o in zip(probs, outcome)])
        bs = trace.simulate_blocks(outcome, k)
        expected_iters += weight * len(bs)
        expected_accepted += weight * sum(b.accepted for b in bs)
        for b in bs:
            expected_hist[b.accepted] += weight
    padded, lengths = trace.pad([np.array(probs)])
    chain = trace.count_blocks_expected(padded, lengths, k)
    assert np.isclose(chain.iterations[0, k - 1], expected_iters)
    assert np.isclose(chain.accepted[0, k - 1], expected_accepted)
    np.testing.assert_allclose(chain.histogram[0, k - 1, : k + 1], expected_hist, atol=1e-9)
    assert np.isclose(chain.emitted[0, k - 1], n)


def test_per_position_acceptance_from_histogram():
    # 10 blocks at k = 3: 4 accepted 0, 3 accepted 1, 2 accepted 2, 1 accepted 3.
    r = trace.per_position_acceptance(np.array([4, 3, 2, 1]), 3)
    np.testing.assert_allclose(r, [0.6, 0.3, 0.1])  # P(≥1) = 6/10, P(≥2) = 3/10, P(≥3) = 1/10
    assert np.isclose(1 + r.sum(), 1 + (3 * 1 + 2 * 2 + 1 * 3) / 10)  # AL = 1 + mean accepted
