"""The α–k cost model: hand-worked values, the seed scenarios, and properties of E, S, α* and the best k."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from specprof.core.pricing import costmodel

alphas = st.floats(0.0, 1.0)
ks = st.integers(1, 32)
costs = st.floats(0.0, 2.0)


def test_worked_values():
    # E(0.5, 2) = 1 + 0.5 + 0.25 = 1.75; at c = 0.1, S = 1.75 / 1.2.
    assert costmodel.expected_tokens(0.5, 2) == pytest.approx(1.75)
    assert costmodel.speedup_iid(0.5, 2, 0.1) == pytest.approx(1.75 / 1.2)
    # k = 1: E = 1 + α, so S = 1 exactly when α = c.
    assert costmodel.breakeven_alpha(1, 0.3) == pytest.approx(0.3, abs=1e-12)
    # A draft as slow as the target never pays.
    assert math.isinf(costmodel.breakeven_alpha(3, 1.0))
    # c = 0: any α > 0 wins, α* = 0.
    assert costmodel.breakeven_alpha(4, 0.0) == 0.0


def test_seed_scenario_small_draft():
    # α = 0.75, a 100M draft for a 7B target. Memory-bound decoding reads every weight once per
    # step, so the parameter ratio 0.1/7 ≈ 0.014 is the *floor* of c, not its value: a 100M model
    # does not saturate memory bandwidth, and its step is dominated by per-layer fixed costs
    # (kernel launches, attention over the KV cache, sampling). We assume a 7B step of ≈ 12 ms
    # (14 GB of bf16 weights at ≈ 1.2 TB/s effective) and a 100M step of ≈ 0.5 ms (launch-bound;
    # bandwidth alone would give ≈ 0.17 ms): c ≈ 0.04.
    # By hand: E(0.75, 7) = (1 − 0.75⁸)/0.25 = 3.5995, S = 3.5995 / 1.28 = 2.812.
    c = 0.04
    best = costmodel.best_k_iid(0.75, c, 16)
    assert best == 7
    assert round(costmodel.speedup_iid(0.75, best, c), 1) == 2.8


def test_seed_scenario_7b_draft_for_70b():
    # α = 0.35, a 7B draft for a 70B target. Both are large enough to be bandwidth-bound, so c is
    # close to the parameter ratio 7/70 = 0.1 (we take it as is: the 70B's tensor-parallel
    # all-reduces and the 7B's relative launch overhead roughly cancel).
    # By hand: k = 1 gives 1.35 / 1.1 = 1.227, k = 2 gives 1.4725 / 1.2 = 1.227 (a hair lower), k = 3
    # gives 1.5154 / 1.3 = 1.166: the best k is 1.
    c = 0.1
    best = costmodel.best_k_iid(0.35, c, 16)
    assert best == 1
    assert round(costmodel.speedup_iid(0.35, best, c), 1) == 1.2


def test_costs_measured_equals_the_design_formula():
    # S = E_emp(k)·t_T(1) / (k·t_D + t_T(k+1)); with t_T = (10, 12, 15) ms, t_D = 2 ms, E = (1.8, 2.4):
    # k = 1: 1.8·10 / (2 + 12) = 1.2857; k = 2: 2.4·10 / (4 + 15) = 1.2632.
    costs = costmodel.Costs.from_times(0.002, [0.010, 0.012, 0.015], 2)
    assert costs.cost_ratio == pytest.approx(0.2)
    np.testing.assert_allclose(costs.speedup(np.array([1.8, 2.4])), [18 / 14, 24 / 19])
    assert costmodel.speedup_measured(2.4, 2, 0.002, [0.010, 0.012, 0.015]) == pytest.approx(24 / 19)


def test_measured_verification_never_gets_cheaper_than_one_step():
    # t_T(2) = 8 ms < t_T(1) = 10 ms is timer noise: v_1 is taken as 1, not 0.8; v_2 = 15/10.
    costs = costmodel.Costs.from_times(0.001, [0.010, 0.008, 0.015], 2)
    assert costs.verify_cost == (1.0, 1.5)


def test_a_dip_in_verification_times_is_priced_as_measured():
    # SmolLM2 on a 2-core CPU, idle: t_T(n) = 56, 95, 115, 84, 78 ms, the same in the live loop (the
    # matmul kernels change with the number of rows). k = 3 verifies 4 tokens: priced 84/56, not 115/56.
    costs = costmodel.Costs.from_times(0.049, [0.056, 0.095, 0.115, 0.084, 0.078], 4)
    np.testing.assert_allclose(costs.verify_cost, [95 / 56, 115 / 56, 84 / 56, 78 / 56])
    assert costs.warning is None


def test_disturbed_timings_are_flagged():
    # t_T(2) = 3.5 t_T(1): one pass over 2 tokens dearer than 2 single steps; cannot be a machine at rest.
    assert "t_T(2) = 3.5× t_T(1)" in costmodel.Costs.from_times(0.001, [0.010, 0.035, 0.036], 2).warning
    # t_T(3) 40% under t_T(1): a pass over 3 tokens cannot be that much cheaper than one step.
    assert "t_T(3) < t_T(1)" in costmodel.Costs.from_times(0.001, [0.010, 0.020, 0.006], 2).warning
    # A CPU's honest rise (×1.1, ×1.3) is fine.
    assert costmodel.Costs.from_times(0.001, [0.010, 0.011, 0.013], 2).warning is None


def test_disagreement_names_both_causes():
    # α = 0.5, k = 2: i.i.d. E = 1.75; measured 2.2 (runs of matches). c = 0.1, v_2 = 1.5 (a CPU):
    # S_emp / S_iid = (2.2 / 1.75) · (1.2 / 1.7) = 0.887: 11% off, both factors named.
    costs = costmodel.Costs(0.1, (1.2, 1.5), measured=True)
    d = costmodel.explain_disagreement(0.5, 2, 2.2, costs)
    assert d is not None and d.ratio == pytest.approx(2.2 / 1.75 * 1.2 / 1.7)
    assert d.tokens_differ and d.costs_differ
    assert d.line() == (
        "empirical speedup is 11% below the i.i.d. model at k=2: measured tokens/iter 2.20 vs i.i.d. 1.75: "
        "acceptance is not i.i.d. along a sequence (matches come in runs); verifying 3 tokens costs 1.50× one "
        "target step on this device (the i.i.d. model assumes 1×)")
    # flat costs, 2.6 tokens/iter: S_emp / S_iid = 2.6 / 1.75 = 1.486, 49% above
    up = costmodel.explain_disagreement(0.5, 2, 2.6, costmodel.Costs.flat(0.1, 2))
    assert up.line() == ("empirical speedup is 49% above the i.i.d. model at k=2: measured tokens/iter 2.60 vs "
                         "i.i.d. 1.75: acceptance is not i.i.d. along a sequence (matches come in runs)")
    assert costmodel.explain_disagreement(0.5, 2, 1.76, costmodel.Costs.flat(0.1, 2)) is None


@given(ks)
def test_no_acceptance_gives_one_token(k):
    assert costmodel.expected_tokens(0.0, k) == 1.0


@given(ks, st.floats(1e-12, 1e-3))
def test_expected_tokens_tends_to_k_plus_one(k, eps):
    # E(1 − ε, k) = Σ (1 − ε)^i ≥ (k + 1) − ε·k(k + 1)/2.
    assert costmodel.expected_tokens(1.0, k) == k + 1
    e = costmodel.expected_tokens(1.0 - eps, k)
    assert k + 1 - eps * k * (k + 1) / 2 - 1e-9 <= e <= k + 1


@given(ks, costs, alphas, alphas)
def test_speedup_increases_with_alpha(k, c, a1, a2):
    lo, hi = sorted((a1, a2))
    assert costmodel.speedup_iid(lo, k, c) <= costmodel.speedup_iid(hi, k, c)


@given(alphas, costs, costs, st.integers(1, 24))
def test_best_k_never_increases_with_cost(alpha, c1, c2, k_max):
    cheap, dear = sorted((c1, c2))
    assert costmodel.best_k_iid(alpha, dear, k_max) <= costmodel.best_k_iid(alpha, cheap, k_max)


@given(ks, st.floats(0.0, 0.999))
def test_breakeven_gives_speedup_one(k, c):
    a = costmodel.breakeven_alpha(k, c)
    assert 0.0 <= a <= 1.0
    assert abs(costmodel.speedup_iid(a, k, c) - 1.0) <= 1e-9


@given(ks, st.floats(0.0, 0.999), alphas)
def test_breakeven_separates_wins_from_losses(k, c, alpha):
    a = costmodel.breakeven_alpha(k, c)
    s = costmodel.speedup_iid(alpha, k, c)
    if alpha > a + 1e-9:
        assert s >= 1.0
    if alpha < a - 1e-9:
        assert s <= 1.0
