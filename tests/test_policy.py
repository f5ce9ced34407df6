"""Confidence-threshold drafting simulated from match and top-1 records: worked by hand, then properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from specprof.core.pricing import costmodel
from specprof.core.pricing.policy_estimate import policy_cost
from specprof.core.simulation import trace
from specprof.core.simulation.policy import DraftPolicies, PolicyWalk, count_policy_blocks, simulate_policy

MATCH = [bool(int(c)) for c in "1101011"]
TOP1 = [0.9, 0.4, 0.9, 0.9, 0.8, 0.3, 0.9]


def blocks(match, top1, k_max, tau):
    return [(b.start, b.accepted, b.emitted, b.steps_lo, b.steps_hi, b.full)
            for b in simulate_policy(match, top1, k_max, tau)]


def test_worked_example_1101011():
    # (start, accepted, emitted, steps_lo, steps_hi, all proposals accepted)
    # k_max 4, τ 0.5:
    #   s=0: p0 = 0.9 matches; p1 = 0.4 < τ matches: stop after it. 2 proposals, both accepted, 3 emitted.
    #   s=3: p3 = 0.9 matches; position 4 mismatches at 0.8 ≥ τ: the draft went on (unseen): 2..4 steps.
    #   s=5: p5 = 0.3 < τ matches: stop after it. 1 proposal accepted, 2 emitted. 7 tokens, 3 iterations.
    assert blocks(MATCH, TOP1, 4, 0.5) == [(0, 2, 3, 2, 2, True), (3, 1, 2, 2, 4, False), (5, 1, 2, 1, 1, True)]
    # k_max 2: at s=3 the mismatch is the 2nd proposal, the last allowed: exactly 2 steps.
    assert blocks(MATCH, TOP1, 2, 0.5) == [(0, 2, 3, 2, 2, True), (3, 1, 2, 2, 2, False), (5, 1, 2, 1, 1, True)]
    # τ 0 never stops early: the fixed-k = 4 blocks; each ends at a confident mismatch (or the end of y),
    # so the steps after it are unseen: 3..4, 2..4, and at s=5 the run reaches the end: 3..4.
    assert blocks(MATCH, TOP1, 4, 0.0) == [(0, 2, 3, 3, 4, False), (3, 1, 2, 2, 4, False), (5, 2, 2, 3, 4, False)]
    assert [b[:3] for b in blocks(MATCH, TOP1, 4, 0.0)] == [
        (b.start, b.accepted, b.emitted) for b in trace.simulate_blocks(MATCH, 4)]


def test_mismatch_below_tau_is_exact():
    # s=0: the first proposal mismatches at 0.2 < τ: proposed, rejected, stop: exactly 1 step, 0 accepted.
    # s=1: matches at 0.9 and reaches the end of y: 1 accepted, the bonus lies past the end (1 emitted),
    #      the draft's next proposal lies past the end too: 2..3 steps.
    assert blocks([False, True], [0.2, 0.9], 3, 0.5) == [(0, 0, 1, 1, 1, False), (1, 1, 1, 2, 3, False)]


def test_threshold_above_one_proposes_one_token():
    # No probability reaches τ > 1: every block proposes exactly one token, the fixed k = 1 trace.
    got = blocks(MATCH, TOP1, 6, 1.5)
    assert [b[:3] for b in got] == [(b.start, b.accepted, b.emitted) for b in trace.simulate_blocks(MATCH, 1)]
    assert all(b[3] == b[4] == 1 for b in got)


def test_vectorised_counts_equal_worked_example():
    # The grid τ ∈ {0, 0.5} × k_max ∈ {2, 4} on 1101011, by hand (blocks as in the tests above):
    #   τ 0,   k_max 2: s=0 accepts 2 (2nd proposal is the last: full), s=3 accepts 1 (mismatch is the 2nd,
    #                   last proposal: exactly 2 steps), s=5 accepts 2 (full). 5 accepted, 2 full.
    #   τ 0,   k_max 4: accepts 2, 1, 2; no block full (each ends at a confident mismatch or the end).
    #   τ 0.5, k_max 2 and 4: accepts 2, 1, 1 (the stops at 0.4 and 0.3); 2 full.
    padded, lengths = trace.pad([np.array(MATCH, dtype=float)])
    top1, _ = trace.pad([np.array(TOP1)])
    c = count_policy_blocks(padded, top1, lengths, k_maxes=[2, 4], taus=[0.0, 0.5])
    assert c.iterations[0].tolist() == [[3, 3], [3, 3]]  # [τ, k_max]
    assert c.accepted[0].tolist() == [[5, 5], [4, 4]]
    assert c.full[0].tolist() == [[2, 0], [2, 2]]
    # τ 0.5, k_max 4: steps 2, 2..4, 1 → lower-bound histogram {1: 1, 2: 2}, upper {1: 1, 2: 1, 4: 1}
    assert c.steps_lo[0, 1, 1].tolist() == [0, 1, 2, 0, 0]
    assert c.steps_hi[0, 1, 1].tolist() == [0, 1, 1, 0, 1]
    # τ 0, k_max 4: steps 3..4, 2..4, 3..4
    assert c.steps_lo[0, 0, 1].tolist() == [0, 0, 1, 2, 0]
    assert c.steps_hi[0, 0, 1].tolist() == [0, 0, 0, 0, 3]


def test_cost_prices_blocks_like_fixed_k_iterations():
    # c = 0.1; t_T(1..5) = 1.0, 1.2, 1.5, 1.5, 2.0 → v_1..v_4 = 1.2, 1.5, 1.5, 2.0; catch-up 0.05 target steps.
    costs = costmodel.Costs.from_times(0.1, [1.0, 1.2, 1.5, 1.5, 2.0], 4, draft_catchup_s=0.05)
    padded, lengths = trace.pad([np.array(MATCH, dtype=float)])
    top1, _ = trace.pad([np.array(TOP1)])
    c = count_policy_blocks(padded, top1, lengths, k_maxes=[2, 4], taus=[0.5])
    lo, hi = policy_cost(c, costs)
    # k_max 2: blocks of 2 (full), 2, 1 (full) steps: (0.2 + v_2 + 0.05) + (0.2 + v_2) + (0.1 + v_1 + 0.05)
    #        = 1.75 + 1.7 + 1.35 = 4.8, both bounds.
    assert lo[0, 0, 0] == pytest.approx(4.8) and hi[0, 0, 0] == pytest.approx(4.8)
    # k_max 4: the middle block drafts 2..4 steps: 0.2 + v_2 = 1.7 up to 0.4 + v_4 = 2.4 → 4.8 .. 5.5.
    assert lo[0, 0, 1] == pytest.approx(4.8) and hi[0, 0, 1] == pytest.approx(5.5)


def test_cost_bounds_stay_ordered_when_verification_time_does_not_rise():
    # c = 0.1; t_T(1..5) = 1.0, 1.2, 1.8, 1.5, 1.3: verifying more tokens can cost less (CPU kernels).
    # Per block of n steps: n·c + v_n = 1.3, 2.0, 1.8, 1.7 for n = 1..4. k_max 4, τ 0.5 (the worked example):
    # blocks of 2 (full, +0.05 catch-up), 2..4 unseen, 1 (full) steps. The unseen block costs 1.7 (4 steps,
    # the cheapest) to 2.0 (2 steps, the dearest): 2.05 + 1.7 + 1.35 = 5.1 .. 2.05 + 2.0 + 1.35 = 5.4.
    # (Priced at "stop at the rejection" and "run on to k_max", the bounds came out reversed: 5.4 .. 5.1.)
    padded, lengths = trace.pad([np.array(MATCH, dtype=float)])
    top1, _ = trace.pad([np.array(TOP1)])
    c = count_policy_blocks(padded, top1, lengths, k_maxes=[4], taus=[0.5])
    lo, hi = policy_cost(c, costmodel.Costs.from_times(0.1, [1.0, 1.2, 1.8, 1.5, 1.3], 4, draft_catchup_s=0.05))
    assert lo[0, 0, 0] == pytest.approx(5.1) and hi[0, 0, 0] == pytest.approx(5.4)
    # t_T = 1.0, 1.2, 1.8, 1.1, 1.9: 1.3, 2.0, 1.4, 2.3 per block; the unseen block's cheapest count is the
    # interior n = 3 (1.4), neither end: 2.05 + 1.4 + 1.35 = 4.8 .. 2.05 + 2.3 + 1.35 = 5.7.
    lo, hi = policy_cost(c, costmodel.Costs.from_times(0.1, [1.0, 1.2, 1.8, 1.1, 1.9], 4, draft_catchup_s=0.05))
    assert lo[0, 0, 0] == pytest.approx(4.8) and hi[0, 0, 0] == pytest.approx(5.7)


def test_cost_of_a_never_stopping_policy_is_the_fixed_k_price():
    # τ 0: the upper step bound is k_max in every block that was not fully accepted, and k_max in the full
    # ones: exactly the fixed-k iterations' k·c + v_k, plus the catch-up after full blocks.
    rng = np.random.default_rng(0)
    match = rng.random((5, 40)) < 0.7
    lengths = np.array([40, 33, 1, 17, 0])
    costs = costmodel.Costs.from_times(0.08, [1.0, 1.1, 1.3, 1.4, 1.6], 4, draft_catchup_s=0.03)
    c = count_policy_blocks(match.astype(float), rng.random((5, 40)), lengths, k_maxes=[2, 3, 4], taus=[0.0])
    fixed = trace.count_blocks_exact(np.where(np.arange(40) < lengths[:, None], match, 0), lengths, 4)
    _, hi = policy_cost(c, costs)
    for q, k in enumerate([2, 3, 4]):
        full = fixed.histogram[:, k - 1, k]
        expected = fixed.iterations[:, k - 1] * (k * costs.cost_ratio + costs.verify_cost[k - 1]) \
            + full * costs.catchup_ratio
        assert np.allclose(hi[:, 0, q], expected)
        assert np.array_equal(c.iterations[:, 0, q], fixed.iterations[:, k - 1])
        assert np.array_equal(c.full[:, 0, q], full)


# --- properties --------------------------------------------------------------------------------

records = st.lists(st.tuples(st.booleans(), st.sampled_from([0.05, 0.3, 0.5, 0.7, 0.95, 1.0])), max_size=40)


@given(records, st.integers(1, 8), st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.96]))
def test_blocks_cover_the_sequence_and_bounds_are_ordered(rec, k_max, tau):
    match, top1 = [m for m, _ in rec], [p for _, p in rec]
    position = 0
    for b in simulate_policy(match, top1, k_max, tau):
        assert b.start == position
        assert all(match[b.start : b.start + b.accepted])
        assert b.accepted <= b.steps_lo <= b.steps_hi <= k_max
        assert 1 <= b.steps_lo
        if b.full:
            assert b.accepted == b.steps_lo == b.steps_hi
        position += b.emitted
    assert position == len(match)


@given(records, st.integers(1, 8))
def test_tau_zero_is_fixed_k(rec, k_max):
    match, top1 = [m for m, _ in rec], [p for _, p in rec]
    got = simulate_policy(match, top1, k_max, 0.0)
    assert [(b.start, b.accepted, b.emitted) for b in got] == [
        (b.start, b.accepted, b.emitted) for b in trace.simulate_blocks(match, k_max)]
    assert all(b.steps_hi == k_max for b in got)


@given(records, st.integers(1, 7), st.sampled_from([0.0, 0.3, 0.5, 0.7]))
def test_iterations_fall_with_k_max_and_rise_with_tau(rec, k_max, tau):
    # A block's reach s + accepted + 1 never shrinks as s grows, and grows pointwise with k_max and as τ
    # falls; greedy jumps with a longer reach need no more iterations.
    match, top1 = [m for m, _ in rec], [p for _, p in rec]
    n = len(simulate_policy(match, top1, k_max, tau))
    assert len(simulate_policy(match, top1, k_max + 1, tau)) <= n
    assert len(simulate_policy(match, top1, k_max, tau + 0.25)) >= n


@given(st.lists(records, min_size=1, max_size=5), st.data())
def test_vectorised_equals_simulate_row_by_row(rows, data):
    k_maxes = data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=3, unique=True))
    taus = data.draw(st.lists(st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.96]), min_size=1, max_size=3, unique=True))
    match, lengths = trace.pad([np.array([m for m, _ in r], dtype=float) for r in rows])
    top1, _ = trace.pad([np.array([p for _, p in r]) for r in rows])
    c = count_policy_blocks(match, top1, lengths, k_maxes, taus)
    top = max(k_maxes)
    for i, r in enumerate(rows):
        for j, tau in enumerate(taus):
            for q, k in enumerate(k_maxes):
                got = simulate_policy([m for m, _ in r], [p for _, p in r], k, tau)
                assert c.iterations[i, j, q] == len(got)
                assert c.accepted[i, j, q] == sum(b.accepted for b in got)
                assert c.full[i, j, q] == sum(b.full for b in got)
                assert c.steps_lo[i, j, q].tolist() == np.bincount([b.steps_lo for b in got], minlength=top + 1)[
                    : top + 1].tolist()
                assert c.steps_hi[i, j, q].tolist() == np.bincount([b.steps_hi for b in got], minlength=top + 1)[
                    : top + 1].tolist()


def test_counts_per_domain_and_per_picked_policy_are_sums_and_slices_of_the_per_prompt_grid():
    """What `recommend` walks: every policy tallied per domain (it picks on those totals), then the picked
    policies again per prompt (it bootstraps those); both equal the per-prompt grid summed or sliced."""
    rng = np.random.default_rng(11)
    match = (rng.random((40, 30)) < 0.6).astype(np.int8)
    top1 = rng.random((40, 30))
    lengths = rng.integers(0, 31, 40)
    domain = rng.integers(0, 3, 40)
    k_maxes, taus = [2, 3, 5], [0.2, 0.5, 0.8]
    grid = count_policy_blocks(match, top1, lengths, k_maxes, taus).histogram  # [prompt, τ, k_max, 3, 6]
    walk = PolicyWalk(match, top1, lengths, k_maxes)
    by_domain = walk.counts(taus, domain).histogram
    for d in range(3):
        assert np.array_equal(by_domain[d], grid[domain == d].sum(0))
    policies = DraftPolicies(walk.counts(taus, domain), domain, walk)
    assert np.array_equal(policies.total(domain != 1), grid[domain != 1].sum(0))
    picks = [0 * 3 + 2, 2 * 3 + 0, 2 * 3 + 1]  # (τ 0.2, k_max 5), (τ 0.8, k_max 2), (τ 0.8, k_max 3)
    for g, (counts, i) in policies.per_prompt(picks).items():
        j, q = divmod(g, 3)
        assert counts.taus == (taus[j],) and counts.k_maxes[i] == k_maxes[q]
        assert np.array_equal(counts.histogram[:, 0, i], grid[:, j, q])
    assert grid.sum() > 0


def test_continuations_too_long_for_int16_codes_walk_in_int32():
    """Past 8,190 tokens the position codes leave int16 (`PolicyWalk`): the same counts as the simulation."""
    rng = np.random.default_rng(5)
    n = 8300
    match = (rng.random((2, n)) < 0.8).astype(np.int8)
    top1 = rng.random((2, n))
    lengths = np.array([n, n - 7])
    walk = PolicyWalk(match, top1, lengths, [2, 5])
    assert walk.grid.runs.dtype == np.int32
    c = walk.counts([0.3, 0.6])
    for i in range(2):
        for j, tau in enumerate([0.3, 0.6]):
            for q, k in enumerate([2, 5]):
                got = simulate_policy(match[i, : lengths[i]].tolist(), top1[i, : lengths[i]].tolist(), k, tau)
                assert c.iterations[i, j, q] == len(got)
                assert c.accepted[i, j, q] == sum(b.accepted for b in got)
                assert c.full[i, j, q] == sum(b.full for b in got)
