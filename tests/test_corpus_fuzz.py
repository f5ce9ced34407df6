"""Whatever bytes or JSON lines a user hands the corpus loader, it loads them or raises SpecprofError."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specprof.core.records.corpus import load_corpus
from specprof.errors import SpecprofError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
records = st.dictionaries(
    st.sampled_from(["id", "domain", "prompt", "messages", "other"]),
    json_values | st.lists(st.fixed_dictionaries({"role": st.text(max_size=9), "content": st.text(max_size=9)})),
    max_size=4,
)


def load_or_refuse(name: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        try:
            prompts = load_corpus(path)
        except SpecprofError:
            return
        assert prompts and all(p.id and p.domain for p in prompts)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.sampled_from(["p.jsonl", "p.csv", "p.txt", "p.parquet"]))
def test_random_bytes(data, name):
    load_or_refuse(name, data)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records, min_size=1, max_size=5))
def test_random_json_lines(lines):
    load_or_refuse("p.jsonl", "\n".join(json.dumps(r) for r in lines).encode())
