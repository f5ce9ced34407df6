"""The draft's catch-up step in the empirical cost model, worked by hand (no torch, no models)."""

from __future__ import annotations

import numpy as np
import pytest

from specprof.core.pricing import costmodel
from specprof.core.pricing.estimate import full_fraction
from specprof.core.pricing.timings import Timings, costs_for


def test_full_fraction_from_the_histogram():
    histogram = np.array([[3, 1, 0],  # k = 1: 4 blocks, 1 accepted its single proposal
                          [2, 1, 1]])  # k = 2: 4 blocks, 1 accepted both
    assert full_fraction(histogram).tolist() == [0.25, 0.25]
    assert full_fraction(np.zeros((2, 3))).tolist() == [0.0, 0.0]  # no blocks: nothing to catch up


def test_speedup_with_catch_up_worked_by_hand():
    # k = 2: two draft steps 2·0.05, the target verifying 3 tokens 0.18, and half the blocks fully
    # accepted, each followed by a 2-token draft step costing 0.03 more: 0.1 + 0.18 + 0.015 = 0.295 s
    # per iteration against 2 tokens × 0.1 s alone: S = 0.2 / 0.295.
    t_T = [0.1, 0.15, 0.18]
    assert costmodel.speedup_measured(2.0, 2, 0.05, t_T, 0.5, 0.03) == pytest.approx(0.2 / 0.295)
    assert costmodel.speedup_measured(2.0, 2, 0.05, t_T) == pytest.approx(0.2 / 0.28)  # without it


def test_older_reports_without_catch_up_times_price_it_at_zero():
    old = Timings.from_dict({"target_forward_s": [0.1, 0.15, 0.18], "draft_step_s": {"d": 0.05},
                             "context_tokens": 64})
    assert old.draft_catchup_s == {}
    new = Timings.from_dict({**old.as_dict(), "draft_catchup_s": {"d": 0.03}})
    tokens_per_iter, full = np.array([1.5, 2.0]), np.array([0.5, 0.5])

    def speedup(timings: Timings) -> np.ndarray:
        return costs_for("d", timings, None, 2).for_blocks(full).speedup(tokens_per_iter)

    np.testing.assert_allclose(speedup(old), [0.15 / 0.2, 0.2 / 0.28])
    np.testing.assert_allclose(speedup(new), [0.15 / 0.215, 0.2 / 0.295])
    # --cost-ratio plans for other hardware: no measured catch-up there.
    flat = costs_for("d", new, 0.5, 2).for_blocks(full)
    np.testing.assert_allclose(flat.speedup(tokens_per_iter), [1.5 / 1.5, 2.0 / 2.0])


def test_blocks_that_proposed_fewer_tokens_are_priced_as_verified():
    # An n-gram draft at k = 2 on a CPU: c = 0.01, v_1 = 1.6, v_2 = 1.3 (t_T(3) < t_T(2), as measured).
    # Half its blocks proposed nothing (the target verifies 1 token: 1.0), a quarter 1 (0.01 + 1.6),
    # a quarter 2 (0.02 + 1.3): 0.5 + 0.4025 + 0.33 = 1.2325 target steps per iteration at k = 2.
    # k = 1: all proposed 1: 0.01 + 1.6.
    costs = costmodel.Costs.from_times(0.001, [0.1, 0.16, 0.13], 2)
    proposed = np.array([[0.0, 1.0, 0.0], [0.5, 0.25, 0.25]])
    priced = costs.for_blocks([0.0, 0.0], proposed)
    np.testing.assert_allclose(priced.iteration(), [1.61, 1.2325])
    np.testing.assert_allclose(costs.for_blocks([0.0, 0.0]).iteration(), [1.61, 1.32])  # always k
