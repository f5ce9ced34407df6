"""Bootstrap over prompts and the decision rule: worked cases, coverage against a known answer, properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specprof.core.answers import decide
from specprof.core.pricing import costmodel, stats
from specprof.core.pricing.estimate import estimate
from specprof.core.simulation import trace
from specprof.core.simulation.traces import DraftTrace


def test_weights_are_draw_counts():
    w = stats.resample_weights(7, 50, np.random.default_rng(0))
    assert w.shape == (50, 7)
    assert (w.sum(1) == 7).all() and (w >= 0).all()


def test_two_prompt_example_from_the_docstring():
    # (accepted, tokens) = (3, 4) and (1, 4): resamples give α ∈ {0.75, 0.5, 0.25} with odds 1:2:1.
    w = stats.resample_weights(2, 20000, np.random.default_rng(1))
    alpha = stats.ratio_of_sums(w, np.array([[3.0], [1.0]]), np.array([[4.0], [4.0]]))[:, 0]
    values, counts = np.unique(alpha, return_counts=True)
    np.testing.assert_allclose(values, [0.25, 0.5, 0.75])
    # 20000 draws: each share within 0.02 of 1/4, 1/2, 1/4 (> 6 standard errors: false failure < 1e-9).
    np.testing.assert_allclose(counts / counts.sum(), [0.25, 0.5, 0.25], atol=0.02)


def test_seeded_and_stable_per_name():
    a = stats.resample_weights(9, 10, stats.rng_for(0, "ngram", "code"))
    b = stats.resample_weights(9, 10, stats.rng_for(0, "ngram", "code"))
    c = stats.resample_weights(9, 10, stats.rng_for(0, "ngram", "math"))
    assert (a == b).all() and not (a == c).all()


def test_interval_covers_the_true_mean_about_95_percent_of_the_time():
    # Known answer: each of 40 prompts has its own acceptance rate p ~ Beta(3, 2) (mean 0.6) and 64
    # tokens drawn Bernoulli(p), so the true α (expected pooled rate, equal lengths) is 0.6 and the
    # tokens of one prompt are correlated through p, as real ones are. 1000 seeded repetitions, each
    # with 1000 resamples. The percentile interval of a mean of 40 undercovers slightly (≈ 93–95%);
    # the binomial standard error of 1000 repetitions is 0.007, so [0.92, 0.975] fails by chance with
    # odds below 1 in 1000 when the true coverage is anywhere in 0.935–0.955.
    rng = np.random.default_rng(2024)
    n_prompts, n_tokens, reps = 40, 64, 1000
    covered = 0
    for _ in range(reps):
        p = rng.beta(3.0, 2.0, size=n_prompts)
        accepted = rng.binomial(n_tokens, p).astype(np.float64)
        tokens = np.full(n_prompts, float(n_tokens))
        point = accepted.sum() / tokens.sum()
        w = stats.resample_weights(n_prompts, stats.N_RESAMPLES, rng)
        samples = stats.ratio_of_sums(w, accepted[:, None], tokens[:, None])
        lo, hi = stats.percentile_interval(samples, np.array([point]))
        covered += lo[0] <= 0.6 <= hi[0]
    assert 0.92 <= covered / reps <= 0.975, covered / reps


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 50)), min_size=1, max_size=12), st.integers(0, 99))
def test_interval_contains_the_point_estimate(prompts, seed):
    accepted = np.array([[min(a, n)] for a, n in prompts], dtype=np.float64)
    tokens = np.array([[n] for _, n in prompts], dtype=np.float64)
    point = accepted.sum(0) / tokens.sum(0)
    w = stats.resample_weights(len(prompts), 200, np.random.default_rng(seed))
    lo, hi = stats.percentile_interval(stats.ratio_of_sums(w, accepted, tokens), point)
    assert lo[0] <= point[0] <= hi[0]


def test_decision_rules():
    assert stats.decision_rule(1.5, 1.2, 1.8, 20).decision == "GO"  # lower bound 1.2 ≥ 1.1
    assert stats.decision_rule(0.8, 0.7, 0.95, 20).decision == "NO-GO"  # upper bound 0.95 < 1.0
    assert stats.decision_rule(1.5, 1.2, 1.8, 20, min_speedup=1.3).decision == "INCONCLUSIVE"
    assert stats.decision_rule(1.5, 1.2, 1.8, 3).decision == "INCONCLUSIVE"  # fewer than MIN_PROMPTS prompts


def test_more_prompts_for_a_likely_go():
    # S = 1.3, [1.05, 1.55] from 12 prompts: the lower half-width 0.25 must shrink to 0.2, so
    # n' = 12·(0.25/0.2)² = 18.75 → 19 prompts, 7 more.
    v = stats.decision_rule(1.3, 1.05, 1.55, 12)
    assert (v.decision, v.more_prompts) == ("INCONCLUSIVE", 7)
    assert v.reason == "likely GO; ~7 more prompts would decide it"


def test_more_prompts_for_a_likely_no_go():
    # S = 0.9, [0.7, 1.1] from 10 prompts: the upper half-width 0.2 must shrink below 0.1:
    # n' = 10·(0.2/0.1)² = 40, 30 more.
    v = stats.decision_rule(0.9, 0.7, 1.1, 10)
    assert (v.decision, v.more_prompts) == ("INCONCLUSIVE", 30)


def test_a_point_on_the_threshold_is_marginal_not_thousands_of_prompts():
    # S = 0.99, [0.90, 1.08] from 12 prompts: NO-GO needs the upper half-width 0.09 below 0.01:
    # n' = 12·(0.09/0.01)² = 972, 960 more: beyond 10 × 12, so no count is given.
    v = stats.decision_rule(0.99, 0.90, 1.08, 12)
    assert (v.decision, v.more_prompts) == ("INCONCLUSIVE", None)
    assert v.reason == "marginal: the speedup sits at the threshold; more prompts will not settle it"
    # S = 1.11 with [1.0, 1.22]: GO needs n' = 12·(0.11/0.01)² = 1452: the same.
    v = stats.decision_rule(1.11, 1.0, 1.22, 12)
    assert (v.decision, v.more_prompts) == ("INCONCLUSIVE", None)
    assert v.reason == "marginal: the speedup sits at the threshold; more prompts will not settle it"
    # Up to 10 × n more is still counted: S = 0.9, [0.8, 1.2] from 10 prompts: n' = 10·(0.3/0.1)² = 90, 80 more.
    v = stats.decision_rule(0.9, 0.8, 1.2, 10)
    assert (v.more_prompts, v.reason) == (80, "likely NO-GO; ~80 more prompts would decide it")


def test_one_prompt_is_singular():
    assert stats.decision_rule(1.5, 1.2, 1.8, 1).reason == "only 1 prompt; intervals need 5+"
    assert stats.decision_rule(1.5, 1.2, 1.8, 3).reason == "only 3 prompts; intervals need 5+"


def test_marginal_gain_is_not_decided_by_more_prompts():
    v = stats.decision_rule(1.05, 0.95, 1.15, 30)
    assert v.decision == "INCONCLUSIVE" and v.more_prompts is None
    assert v.reason == "marginal: 1.0 ≤ S < 1.1; more prompts won't make it GO"


@pytest.mark.parametrize("seed", range(5))
def test_the_estimated_prompts_decide_when_the_point_holds(seed):
    # The estimate assumes the point stays and the interval narrows as 1/√n. Known answer: repeat
    # each prompt r times; the point is unchanged and the bootstrap variance falls exactly r-fold.
    # With r ≥ 1.3 × the estimated n'/n (slack for the resampling noise of a 2.5% quantile), the lower
    # bound then clears --min-speedup: GO.
    rng = np.random.default_rng(seed)
    prompts = [rng.random(48) < p for p in rng.beta(4.0, 2.0, size=12)]
    costs = costmodel.Costs.flat(0.05, 3)
    first = _estimate(prompts, 3, costs, 1.0, "x")
    min_speedup = float(first.speedup[2] + first.speedup_lo[2]) / 2  # halfway into the interval: undecided
    e = _estimate(prompts, 3, costs, min_speedup, "x")
    v = e.verdict(3)
    assert v.decision == "INCONCLUSIVE" and v.more_prompts
    r = int(np.ceil(1.3 * (12 + v.more_prompts) / 12))
    assert r >= 4  # halfway in: about 4× the prompts by the 1/√n rule
    bigger = _estimate([p for p in prompts for _ in range(r)], 3, costs, min_speedup, "x")
    assert bigger.speedup[2] == pytest.approx(e.speedup[2])
    assert bigger.verdict(3).decision == "GO"


def _estimate(matches, k_max, costs, min_speedup, name):
    padded, lengths = trace.pad([np.asarray(m, dtype=np.float64) for m in matches])
    counts = trace.count_blocks_exact(padded, lengths, k_max)
    n = len(matches)
    t = DraftTrace(name, np.array([f"p{i}" for i in range(n)]), np.array(["d"] * n), lengths,
                   padded.sum(1), counts)
    return estimate(t, "d", costs, min_speedup)


def test_estimate_matches_hand_worked_pooling():
    # Two prompts: 1101110 and 0000. At k = 2: blocks (3, 3, 1) and (1, 1, 1, 1): 11 tokens in 7
    # iterations, tokens/iter = 11/7. α = 5/11. Flat c = 0.1: S = (11/7) / 1.2.
    e = _estimate([[1, 1, 0, 1, 1, 1, 0], [0, 0, 0, 0]], 2, costmodel.Costs.flat(0.1, 2), 1.1, "x")
    assert e.alpha == pytest.approx(5 / 11)
    assert e.tokens_per_iter[1] == pytest.approx(11 / 7)
    assert e.speedup[1] == pytest.approx(11 / 7 / 1.2)
    assert e.alpha_lo <= e.alpha <= e.alpha_hi
    assert e.verdict().decision == "INCONCLUSIVE"  # 2 prompts: too few to decide


def test_effectively_off_names_the_usual_causes():
    # 8 prompts, one accepted token in 20 at random places: tokens/iter ≈ 1.05 < 1.1 at every k.
    rng = np.random.default_rng(3)
    prompts = [rng.random(20) < 0.05 for _ in range(8)]
    e = _estimate(prompts, 4, costmodel.Costs.flat(0.02, 4), 1.1, "off")
    assert e.effectively_off
    assert e.verdict().decision != "GO"
    assert e.why() == "effectively off: tokens/iter < 1.1 at every k"
    # recommend --json names the usual causes
    why = decide.recommendation_json(e)["why"]
    assert why.startswith("effectively off") and "another model family" in why and "chat template" in why


def test_no_go_reason_names_the_draft_cost():
    # α = 0.5 on every prompt (1010…) and a draft step slower than a target step (c = 1.2):
    # k = 1 makes 10 blocks "10" (accept 1, emit 2): tokens/iter 2.0, S = 2 / 2.2 = 0.91; k = 2 is
    # the same blocks at 2 / 3.4. Every prompt alike, so the interval is the point: NO-GO.
    prompts = [[1, 0] * 10 for _ in range(8)]
    e = _estimate(prompts, 2, costmodel.Costs.flat(1.2, 2), 1.1, "slow")
    assert e.best_k == 1 and e.speedup[0] == pytest.approx(2 / 2.2)
    assert e.verdict().decision == "NO-GO"
    assert e.why() == "draft step costs 120% of a target step; breaks even at 2.20 tokens/iter"


@pytest.mark.filterwarnings("ignore:All-NaN slice encountered")  # the empty column: its callers silence it too
def test_interval_of_many_columns_equals_each_column_alone():
    # percentile_interval takes one partition for the columns without a non-finite resample and nanquantile
    # for the rest: each column's bounds must be exactly what that column gives alone.
    rng = np.random.default_rng(3)
    samples = rng.random((200, 6))
    samples[[4, 9], 1] = np.nan  # a resample that missed a bucket's prompts
    samples[7, 3] = np.inf
    samples[:, 5] = np.nan  # nothing at all
    point = samples[0].copy()
    point[5] = 0.5
    lo, hi = stats.percentile_interval(samples, point)
    for j in range(samples.shape[1]):
        lo_j, hi_j = stats.percentile_interval(samples[:, [j]], point[[j]])
        assert (lo[j], hi[j]) == (lo_j[0], hi_j[0]) or (np.isnan(lo_j[0]) and np.isnan(lo[j])), j
    finite_only = stats.percentile_interval(samples[:, [0, 2, 4]], point[[0, 2, 4]])  # the one-partition path
    assert np.array_equal(finite_only[0], lo[[0, 2, 4]]) and np.array_equal(finite_only[1], hi[[0, 2, 4]])
