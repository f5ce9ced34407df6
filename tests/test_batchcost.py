"""The cost model at a serving batch size: properties, a hand-worked plan with its crossover, vLLM's rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from specprof.core.pricing import batchcost, costmodel
from specprof.core.pricing.batchcost import BatchPoint
from specprof.core.pricing.estimate import Estimate
from specprof.core.pricing.timings import Timings, costs_for
from specprof.errors import SpecprofError

seconds = st.floats(1e-4, 1.0)
k_maxes = st.integers(1, 8)
batch_sizes = st.integers(2, 256)


def timings(t_target, t_draft, catchup=0.0, batch_size=1, by=()) -> Timings:
    return Timings(tuple(t_target), {"d": t_draft}, 100, {"d": catchup}, by_batch_size=tuple(by),
                   batch_size=batch_size)


@given(k_maxes, st.data())
def test_at_batch_one_the_model_is_todays(k_max, data):
    # A report with per-batch timings prices batch 1 exactly as a report without them: the same Costs,
    # the same S = E·t_T(1) / (k·t_D + t_T(k+1) + f_k·t_C) at every k.
    t = data.draw(st.lists(seconds, min_size=k_max + 1, max_size=k_max + 1))
    t_d, t_c = data.draw(seconds), data.draw(st.floats(0.0, 0.1))
    tokens = np.array(data.draw(st.lists(st.floats(1.0, 9.0), min_size=k_max, max_size=k_max)))
    full = data.draw(st.lists(st.floats(0.0, 1.0), min_size=k_max, max_size=k_max))
    b4 = timings([4 * x for x in t], 2 * t_d, t_c, batch_size=4)
    today = timings(t, t_d, t_c)
    batched = timings(t, t_d, t_c, by=(timings(t, t_d, t_c), b4))
    old = costs_for("d", today, None, k_max).for_blocks(full)
    new = costs_for("d", batchcost.timings_at(batched, 1), None, k_max).for_blocks(full)
    assert new == old
    for k in range(1, k_max + 1):
        expected = costmodel.speedup_measured(tokens[k - 1], k, t_d, np.maximum(t, t[0]), full[k - 1], t_c)
        assert costmodel.speedup_at_batch(tokens[k - 1], k, t_d, np.maximum(t, t[0]), full[k - 1], t_c) == expected
        assert new.speedup(tokens)[k - 1] == pytest.approx(expected, rel=1e-12)


@given(k_maxes, batch_sizes, seconds, st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.data())
def test_compute_bound_costs_never_pay(k_max, b, per_token_s, draft_ratio, catchup_ratio, data):
    # t_T(n; b) = a·n·b: verifying k + 1 tokens costs k + 1 steps, so even when every proposal is
    # accepted (E = k + 1) and the draft is free, S = E / (k·c + k + 1 + …) ≤ 1.
    t = [per_token_s * n * b for n in range(1, k_max + 2)]
    costs = costmodel.Costs.from_times(draft_ratio * per_token_s * b, t, k_max, catchup_ratio * per_token_s * b)
    fractions = data.draw(st.lists(st.floats(0.0, 1.0), min_size=k_max, max_size=k_max))
    best = np.arange(2, k_max + 2, dtype=np.float64)  # E = k + 1: every proposal accepted
    tokens = np.array([1.0 + f * k for f, k in zip(fractions, range(1, k_max + 1))])
    for e in (best, tokens):
        assert (costs.for_blocks(fractions).speedup(e) <= 1.0 + 1e-12).all()


@given(k_maxes, batch_sizes, seconds, st.floats(0.0, 2.0), st.floats(0.0, 1.0))
def test_flat_costs_reduce_to_the_iid_model(k_max, b, step_s, draft_ratio, alpha):
    # t_T(n; b) = t_T(1; b) for every n, no catch-up, E = E(α, k): S(k, b) = E(α, k) / (k·c_b + 1) with
    # c_b = t_D(b) / t_T(1; b), Leviathan et al.'s model at that batch size's cost ratio.
    costs = costmodel.Costs.from_times(draft_ratio * step_s, [step_s] * (k_max + 1), k_max)
    e = np.array([costmodel.expected_tokens(alpha, k) for k in range(1, k_max + 1)])
    iid = [costmodel.speedup_iid(alpha, k, costs.cost_ratio) for k in range(1, k_max + 1)]
    np.testing.assert_allclose(costs.speedup(e), iid, rtol=1e-12)
    assert costs.cost_ratio == pytest.approx(draft_ratio, rel=1e-12)


def test_crossover_is_where_the_speedup_crosses_one():
    # S = 1.5, 1.2, 0.8 at b = 1, 4, 16: it pays at 4, not at 16; linear in b between them:
    # b* = 4 + (1.2 − 1) / (1.2 − 0.8) · (16 − 4) = 4 + 0.5 · 12 = 10.
    assert batchcost.crossover([1, 4, 16], [1.5, 1.2, 0.8]) == pytest.approx(10.0)
    # Exactly 1 at a measured size still pays: from b = 4 (S = 1) to 16 (S = 0.5): b* = 4.
    assert batchcost.crossover([1, 4, 16], [1.5, 1.0, 0.5]) == pytest.approx(4.0)
    # It pays at the largest size (after a dip): no crossover among the measured sizes.
    assert batchcost.crossover([1, 4, 16], [1.5, 0.9, 1.1]) is None
    assert batchcost.crossover([1, 4], [1.5, 1.2]) is None  # pays at every size
    assert batchcost.crossover([1, 4], [0.9, 0.8]) is None  # pays at none
    # A dip then a last crossing: the last one counts, 4 + 0.1 / 0.3 · 12 = 8.
    assert batchcost.crossover([1, 2, 4, 16], [1.2, 0.9, 1.1, 0.8]) == pytest.approx(8.0)


def hand_worked_estimate(n_prompts: int = 20) -> Estimate:
    # k_max = 2; tokens/iter 1.8 and 2.4 with 95% intervals [1.6, 2.0] and [2.0, 2.8]; at batch 1
    # t_T = 10, 12, 15 ms and t_D = 1 ms.
    costs = costmodel.Costs.from_times(0.001, [0.010, 0.012, 0.015], 2).for_blocks([0.0, 0.0])
    return Estimate("d", "code", n_prompts, 1000, 0.5, 0.45, 0.55, np.array([1.8, 2.4]), np.array([1.6, 2.0]),
                    np.array([2.0, 2.8]), np.array([0.8, 0.7]), np.zeros((2, 3)), costs, 1.1)


def hand_worked_timings() -> Timings:
    # b = 4: t_T = 12, 20, 28 ms, t_D = 2 ms; b = 16: t_T = 20, 40, 60 ms, t_D = 4 ms.
    one = timings([0.010, 0.012, 0.015], 0.001)
    return timings(one.target_forward_s, 0.001, by=(
        one, timings([0.012, 0.020, 0.028], 0.002, batch_size=4), timings([0.020, 0.040, 0.060], 0.004, batch_size=16),
    ))


def test_a_plan_over_batch_sizes_worked_by_hand():
    e = hand_worked_estimate()
    plan = batchcost.batch_plan(e, hand_worked_timings(), [1, 4, 16])
    one, four, sixteen = plan.points
    # b = 1: k = 1 gives 1.8·10 / (1 + 12) = 1.385, k = 2 gives 2.4·10 / (2 + 15) = 24/17 = 1.412: k = 2,
    # with bounds 2.0·10/17 = 1.176 and 2.8·10/17 = 1.647; 1.176 ≥ 1.1: GO. These are e's own figures.
    assert (one.batch_size, one.best_k, one.decision) == (1, 2, "GO")
    assert (one.speedup, one.speedup_lo, one.speedup_hi) == pytest.approx((24 / 17, 20 / 17, 28 / 17))
    assert (one.best_k, one.speedup, one.decision) == (e.best_k, e.speedup[1], e.verdict().decision)
    # b = 4: k = 1 gives 1.8·12 / (2 + 20) = 54/55 = 0.982, k = 2 gives 2.4·12 / (4 + 28) = 0.9: k = 1, with
    # bounds 1.6·12/22 = 0.873 and 2.0·12/22 = 1.091: neither GO nor NO-GO.
    assert (four.best_k, four.decision) == (1, "INCONCLUSIVE")
    assert (four.speedup, four.speedup_lo, four.speedup_hi) == pytest.approx((54 / 55, 48 / 55, 12 / 11))
    # b = 16: k = 1 gives 1.8·20 / (4 + 40) = 0.818 (k = 2: 2.4·20 / 68 = 0.706); upper bound 2·20/44 < 1: NO-GO.
    assert (sixteen.best_k, sixteen.decision) == (1, "NO-GO")
    assert (sixteen.speedup, sixteen.speedup_hi) == pytest.approx((9 / 11, 10 / 11))
    # The crossover: S falls from 24/17 (b = 1) to 54/55 (b = 4): b* = 1 + (7/17) / (24/17 − 54/55) · 3
    # = 1 + 385/402 · 3 = 3.873. From the lower bounds (20/17 → 48/55): 1 + 165/284 · 3 = 2.743; from the
    # upper bounds (12/11 at 4 → 10/11 at 16): 4 + (1/11) / (2/11) · 12 = 10.
    assert plan.crossover.batch_size == pytest.approx(1 + 385 / 402 * 3)
    assert plan.crossover.lo == pytest.approx(1 + 165 / 284 * 3)
    assert plan.crossover.hi == pytest.approx(10.0)
    entry = batchcost.batch_json(plan)
    assert [x["batch_size"] for x in entry["by_batch_size"]] == [1, 4, 16]
    assert entry["crossover_batch_size"] == pytest.approx(3.873, abs=1e-3)
    # vLLM: k = 2 at batch 1, off from 2 on (INCONCLUSIVE at 4 and NO-GO at 16 do not pay).
    assert batchcost.vllm_schedule(plan.points) == [[1, 1, 2], [2, 16, 0]]
    assert batchcost.vllm_schedule(plan.points, max_batch_size=256) == [[1, 1, 2], [2, 256, 0]]


def test_vllm_schedule_rows():
    points = [BatchPoint(1, 4, 2.0, 1.8, 2.2, "GO"), BatchPoint(4, 3, 1.6, 1.4, 1.8, "GO"),
              BatchPoint(16, 2, 1.05, 0.95, 1.15, "INCONCLUSIVE"), BatchPoint(64, 1, 0.8, 0.7, 0.9, "NO-GO")]
    # Sizes 2..4 take batch 4's k (3); 5..16 batch 16's (off), merged with 17..64 (off).
    assert batchcost.vllm_schedule(points) == [[1, 1, 4], [2, 4, 3], [5, 64, 0]]
    assert batchcost.vllm_schedule(points, max_batch_size=256) == [[1, 1, 4], [2, 4, 3], [5, 256, 0]]
    # Paying at the largest measured size: beyond it is not measured, so off up to the engine's maximum.
    paying = points[:2]
    assert batchcost.vllm_schedule(paying) == [[1, 1, 4], [2, 4, 3]]
    assert batchcost.vllm_schedule(paying, max_batch_size=8) == [[1, 1, 4], [2, 4, 3], [5, 8, 0]]
    # The same k at neighbouring sizes is one row.
    same = [BatchPoint(1, 3, 2.0, 1.8, 2.2, "GO"), BatchPoint(8, 3, 1.5, 1.3, 1.7, "GO")]
    assert batchcost.vllm_schedule(same) == [[1, 8, 3]]


def test_timings_round_trip_and_old_reports_stay_batch_one():
    old = {"target_forward_s": [0.01, 0.012], "draft_step_s": {"d": 0.001}, "context_tokens": 50,
           "draft_catchup_s": {"d": 0.0}}
    t = Timings.from_dict(old)
    assert t.by_batch_size == () and t.as_dict() == old  # run.json written without batch sizes is unchanged
    assert batchcost.measured_batch_sizes(t) == (1,)
    new = timings([0.01, 0.012], 0.001, by=(timings([0.01, 0.012], 0.001), timings([0.02, 0.03], 0.002, batch_size=8)))
    d = new.as_dict()
    assert [b["batch_size"] for b in d["by_batch_size"]] == [1, 8]
    back = Timings.from_dict(d)
    assert back == Timings.from_dict(back.as_dict())
    assert batchcost.measured_batch_sizes(back) == (1, 8)
    assert batchcost.timings_at(back, 8).target_forward_s == (0.02, 0.03)
    with pytest.raises(SpecprofError, match="measured at batch size 1, 8 only"):
        batchcost.timings_at(back, 4)


def test_batch_size_lists():
    assert batchcost.parse_batch_sizes(["4,1", "16", "4"]) == (1, 4, 16)
    assert batchcost.parse_batch_sizes([]) == ()
    with pytest.raises(SpecprofError, match="--concurrency 0: batch sizes must be ≥ 1"):
        batchcost.parse_batch_sizes(["0"])
    with pytest.raises(SpecprofError, match="whole numbers"):
        batchcost.parse_batch_sizes(["1,four"])
