"""The walks spread over threads (core/simulation/threads.py) give what one thread gives, in order."""

from __future__ import annotations

import numpy as np
import pytest

from specprof.core.simulation import policy, threads
from specprof.errors import SpecprofError


def test_thread_map_keeps_the_order(monkeypatch):
    monkeypatch.setenv("SPECPROF_THREADS", "3")
    assert threads.thread_map(lambda x: x * x, range(10)) == [x * x for x in range(10)]


@pytest.mark.parametrize("raw", ["0", "-1", "two", ""])
def test_a_bad_thread_count_is_a_one_line_error(monkeypatch, raw):
    monkeypatch.setenv("SPECPROF_THREADS", raw)
    with pytest.raises(SpecprofError, match=f"SPECPROF_THREADS={raw!r}: must be a whole number ≥ 1"):
        threads.n_threads()


def test_policy_grid_is_the_same_on_one_thread_and_on_four(monkeypatch):
    rng = np.random.default_rng(3)
    match = (rng.random((60, 50)) < 0.7).astype(np.int8)
    top1 = rng.random((60, 50))
    lengths = rng.integers(0, 51, 60)
    monkeypatch.setenv("SPECPROF_THREADS", "1")
    one = policy.count_policy_blocks(match, top1, lengths, range(2, 7), policy.TAUS)
    monkeypatch.setenv("SPECPROF_THREADS", "4")
    four = policy.count_policy_blocks(match, top1, lengths, range(2, 7), policy.TAUS)
    assert np.array_equal(one.histogram, four.histogram)
    assert one.histogram.sum() > 0
