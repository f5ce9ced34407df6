"""Corpus loading: every format, generated ids and domains, filters, and errors that name file:line."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from specprof.core.records.corpus import load_corpus
from specprof.errors import SpecprofError


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_with_prompts_and_messages(tmp_path):
    f = write(tmp_path / "p.jsonl", "\n".join([
        json.dumps({"id": "x", "domain": "code", "prompt": "def f():"}),
        "",
        json.dumps({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}),
    ]))
    a, b = load_corpus(f)
    assert (a.id, a.domain, a.prompt) == ("x", "code", "def f():")
    assert (b.id, b.domain, b.prompt) == ("p-3", "default", None)  # stable id from file stem and line
    assert [m.role for m in b.messages] == ["system", "user"]
    assert b.as_record()["messages"][1] == {"role": "user", "content": "hi"}


def test_txt_csv_parquet_and_directory(tmp_path):
    write(tmp_path / "poetry.txt", "a poem about rain\n\nan ode to socks\n")
    write(tmp_path / "q.csv", 'id,domain,prompt\nc1,sql,"SELECT\n1"\nc2,sql,count rows\n')
    pd.DataFrame({"id": ["p1"], "domain": ["json"], "prompt": ["{}"]}).to_parquet(tmp_path / "r.parquet")
    write(tmp_path / "notes.md", "ignored")
    prompts = load_corpus(tmp_path)
    assert [(p.id, p.domain) for p in prompts] == [
        ("poetry-1", "poetry"), ("poetry-3", "poetry"), ("c1", "sql"), ("c2", "sql"), ("p1", "json")
    ]
    assert prompts[2].prompt == "SELECT\n1"
    assert prompts[3].source.endswith("q.csv:4")  # the quoted newline makes row 2 start on line 4


def test_domain_filter_and_limit_per_domain(tmp_path):
    lines = [json.dumps({"id": f"{d}{i}", "domain": d, "prompt": "p"}) for d in "ab" for i in range(3)]
    f = write(tmp_path / "p.jsonl", "\n".join(lines))
    assert [p.id for p in load_corpus(f, limit=2)] == ["a0", "a1", "b0", "b1"]
    assert [p.id for p in load_corpus(f, domains=["b"], limit=1)] == ["b0"]
    with pytest.raises(SpecprofError, match="--domain c: not in the corpus"):
        load_corpus(f, domains=["c"])


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": ', "p.jsonl:2: invalid JSON"),
        ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', "p.jsonl:2: duplicate id 'a' (first at"),
        ('{"id": "a", "domain": "d"}\n', 'p.jsonl:1: missing field "prompt"'),
        ('{"id": "a", "prompt": "   "}\n', "p.jsonl:1: empty prompt"),
        ('[1, 2]\n', "p.jsonl:1: expected a JSON object"),
        ('{"prompt": "x", "messages": []}\n', 'p.jsonl:1: give either "prompt" or "messages"'),
        ('{"messages": [{"role": "robot", "content": "x"}]}\n', "p.jsonl:1: messages[0] has unknown role"),
        ('{"prompt": 3}\n', 'p.jsonl:1: "prompt" must be a string'),
        ('{"prompt": "x", "domain": "ALL"}\n', 'p.jsonl:1: domain "ALL" is reserved'),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, content, message):
    f = write(tmp_path / "p.jsonl", content)
    with pytest.raises(SpecprofError) as e:
        load_corpus(f)
    assert message in str(e.value)


def test_invalid_json_line_says_what_to_do(tmp_path):
    # json's own message ends in "at" ("Unterminated string starting at"): said once, with the fix.
    f = write(tmp_path / "p.jsonl", '{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "unfinished\n')
    with pytest.raises(SpecprofError) as e:
        load_corpus(f)
    assert str(e.value) == f"{f}:2: invalid JSON (Unterminated string starting at column 23): fix or remove the line"
    f = write(tmp_path / "q.jsonl", '{"prompt": }\n')
    with pytest.raises(SpecprofError) as e:
        load_corpus(f)
    assert str(e.value) == f"{f}:1: invalid JSON (Expecting value at column 12): fix or remove the line"


def test_other_errors(tmp_path):
    with pytest.raises(SpecprofError, match="no such file"):
        load_corpus(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(SpecprofError, match="bad.jsonl:2: not valid UTF-8"):
        load_corpus(tmp_path / "bad.jsonl")
    write(tmp_path / "c.csv", "id,text\n1,hello\n")
    with pytest.raises(SpecprofError, match='c.csv:1: no "prompt" or "messages" column'):
        load_corpus(tmp_path / "c.csv")
    write(tmp_path / "empty.jsonl", "\n\n")
    with pytest.raises(SpecprofError, match="holds no prompts"):
        load_corpus(tmp_path / "empty.jsonl")
    write(tmp_path / "x.yaml", "a: 1")
    with pytest.raises(SpecprofError, match="unsupported prompt file type"):
        load_corpus(tmp_path / "x.yaml")


def test_sample_corpus_has_twelve_domains_of_ten():
    prompts = load_corpus("sample_prompts")
    counts = pd.Series([p.domain for p in prompts]).value_counts()
    assert len(counts) >= 12 and counts.min() >= 10
