"""The walks spread over threads (core/simulation/threads.py) give what one thread gives, in order."""

from __future__ import annotations

from concurrent.futures import Future

import numpy as np
import pytest
from test_policy_cli import write_report

from specprof.core.answers.analysis import load_analysis
from specprof.core.simulation import policy, threads
from specprof.errors import SpecprofError


def test_thread_map_keeps_the_order(monkeypatch):
    monkeypatch.setenv("SPECPROF_THREADS", "3")
    assert threads.thread_map(lambda x: x * x, range(10)) == [x * x for x in range(10)]


def test_work_started_from_a_worker_stays_in_its_thread(monkeypatch):
    # the background walk's τs and a report's drafts under compare: more threads would only take turns
    import threading

    monkeypatch.setenv("SPECPROF_THREADS", "4")

    def inner(_):
        return threading.get_ident()

    def outer(_):
        return threading.get_ident(), set(threads.thread_map(inner, range(8))), threads.in_background(inner, 0)

    for me, inner_threads, background in threads.thread_map(outer, range(4)):
        assert inner_threads == {me} and background == me  # a value, not a Future: run in place
    started = threads.in_background(outer, 0)
    assert isinstance(started, Future)
    me, inner_threads, background = started.result()
    assert inner_threads == {me} and background == me != threading.get_ident()
    assert not threads.in_worker()


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


def test_in_background_hands_back_a_future_and_its_error(monkeypatch):
    monkeypatch.setenv("SPECPROF_THREADS", "2")
    running = threads.in_background(lambda a, b: a + b, 2, 3)
    assert isinstance(running, Future) and running.result() == 5

    def fails():
        raise SpecprofError("walk failed")

    with pytest.raises(SpecprofError, match="walk failed"):
        threads.in_background(fails).result()  # type: ignore[union-attr]
    monkeypatch.setenv("SPECPROF_THREADS", "1")
    assert threads.in_background(lambda a, b: a + b, 2, 3) == 5  # one thread: run in place


def test_policies_walked_in_the_background_equal_those_walked_in_place(monkeypatch, tmp_path):
    path = write_report(tmp_path / "r")  # one draft with a confidence to threshold
    monkeypatch.setenv("SPECPROF_THREADS", "2")
    background = load_analysis(path, policies=True)
    assert isinstance(background.policy_counts, Future)
    monkeypatch.setenv("SPECPROF_THREADS", "1")
    in_place = load_analysis(path, policies=True)
    assert isinstance(in_place.policy_counts, dict) and in_place.policies
    assert background.policies.keys() == in_place.policies.keys()
    for draft, counts in in_place.policies.items():
        assert np.array_equal(background.policies[draft].by_group.histogram, counts.by_group.histogram)
