"""The torch-free part of `distill`: held-out split, early stopping, the before/after α table."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specprof.core.answers.distill_eval import DomainCounts, EarlyStopping, alpha_table, lr_factor, split_holdout
from specprof.errors import SpecprofError


def test_split_holds_out_a_rounded_share_of_each_domain():
    domains = ["code"] * 12 + ["chat"] * 12 + ["math"] * 5 + ["solo"]
    held = split_holdout(domains, 0.1, seed=0)
    count = {d: sum(h for h, x in zip(held, domains) if x == d) for d in set(domains)}
    # round(0.1 · 12) = 1; round(0.1 · 5) = 0 → at least 1; a single prompt always stays in training
    assert count == {"code": 1, "chat": 1, "math": 1, "solo": 0}
    held = split_holdout(domains, 0.25, seed=0)
    count = {d: sum(h for h, x in zip(held, domains) if x == d) for d in set(domains)}
    assert count == {"code": 3, "chat": 3, "math": 1, "solo": 0}  # round(1.25) = 1


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=6).filter(lambda s: max(s) >= 2),
    fraction=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**16),
)
def test_split_properties(sizes, fraction, seed):
    domains = [f"d{i}" for i, n in enumerate(sizes) for _ in range(n)]
    held = split_holdout(domains, fraction, seed)
    assert held == split_holdout(domains, fraction, seed)  # deterministic for a seed
    for i, n in enumerate(sizes):
        flags = [h for h, d in zip(held, domains) if d == f"d{i}"]
        if n == 1:
            assert flags == [False]
        else:
            assert 1 <= sum(flags) <= n - 1  # something to train on and something to check, per domain
            assert sum(flags) == min(max(1, round(fraction * n)), n - 1)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, math.nan])
def test_split_rejects_fractions_outside_0_1(fraction):
    with pytest.raises(SpecprofError, match="--holdout"):
        split_holdout(["a", "a"], fraction, 0)


def test_split_needs_a_domain_with_two_prompts():
    with pytest.raises(SpecprofError, match="single prompt"):
        split_holdout(["a", "b"], 0.5, 0)


def test_early_stopping_keeps_the_best_and_waits_patience_evaluations():
    stop = EarlyStopping(patience=2)
    assert stop.update(0, 0.10) is True
    assert stop.update(10, 0.30) is True  # new best
    assert stop.update(20, 0.30) is False  # a tie is no improvement
    assert not stop.should_stop
    assert stop.update(30, 0.25) is False
    assert stop.should_stop  # two evaluations since the best
    assert (stop.best, stop.best_step) == (0.30, 10)


def test_alpha_table_pools_tokens_per_domain():
    before = [DomainCounts("code", 10, 1), DomainCounts("code", 30, 3), DomainCounts("chat", 20, 0)]
    after = [DomainCounts("code", 10, 5), DomainCounts("code", 30, 15), DomainCounts("chat", 20, 4)]
    t = alpha_table(before, after).set_index("domain")
    assert t.loc["code", "alpha_early_exit"] == pytest.approx(4 / 40)  # pooled, not a mean of 0.1 and 0.1
    assert t.loc["code", "alpha_distilled"] == pytest.approx(20 / 40)
    assert t.loc["chat", "gain"] == pytest.approx(4 / 20)
    assert t.loc["ALL", "prompts"] == 3 and t.loc["ALL", "tokens"] == 60
    assert t.loc["ALL", "alpha_distilled"] == pytest.approx(24 / 60)
    assert list(t.index) == ["chat", "code", "ALL"]


def test_lr_factor_warms_up_then_decays_to_the_floor_at_the_horizon():
    assert lr_factor(0, warmup=10, horizon=100) == pytest.approx(0.1 * 1.0)  # warm-up 1/10, cosine still ~1
    assert lr_factor(9, warmup=10, horizon=100) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.09)))
    assert lr_factor(50, warmup=10, horizon=100) == pytest.approx(0.55)  # half-way: (1 + 0.1) / 2
    assert lr_factor(100, warmup=10, horizon=100) == pytest.approx(0.1)
    assert lr_factor(400, warmup=10, horizon=100) == pytest.approx(0.1)  # past the horizon: the floor
