"""Traffic logs as corpora: ShareGPT, OpenAI chat completions and batch files, tables with a response column.

Files are written here from the formats' public descriptions (ShareGPT's `conversations` of
{from, value}; OpenAI's batch input lines {custom_id, method, url, body} and output lines
{id, custom_id, response: {status_code, request_id, body}, error}).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from specprof.core.records.corpus import load_corpus
from specprof.core.records.logs import choose_responses
from specprof.errors import SpecprofError


def jsonl(path, *objs):
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


def test_sharegpt_one_record_per_assistant_turn(tmp_path):
    f = jsonl(
        tmp_path / "sharegpt.jsonl",
        {"id": "c1", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
                                       {"from": "human", "value": "and?"}, {"from": "gpt", "value": "bye"}],
         "meta": {"route": "chat"}},
        {"conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "2+2"},
                           {"from": "gpt", "value": "4"}], "meta": {"route": "math"}},
    )
    prompts = load_corpus(f, domain_field="meta.route")
    assert [(p.id, p.domain, p.response) for p in prompts] == [
        ("c1#1", "chat", "hello"),  # each assistant turn answers every turn before it
        ("c1#2", "chat", "bye"),
        ("sharegpt-2", "math", "4"),  # one assistant turn: the conversation's own id (file stem and line)
    ]
    assert [(m.role, m.content) for m in prompts[1].messages] == [("user", "hi"), ("assistant", "hello"),
                                                                  ("user", "and?")]
    assert [m.role for m in prompts[2].messages] == ["system", "user"]


def test_openai_batch_output_joined_with_its_input(tmp_path):
    jsonl(
        tmp_path / "batch_input.jsonl",
        *[{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
           "body": {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": f"q{i}"}]}],
                    "metadata": {"route": "sql" if i % 2 else "chat"}}}
          for i in range(4)],
    )

    def answer(i, text):
        return {"id": f"batch_req_{i}", "custom_id": f"req-{i}", "error": None,
                "response": {"status_code": 200, "request_id": f"r{i}",
                             "body": {"id": f"chatcmpl-{i}", "object": "chat.completion", "choices": [
                                 {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": "stop"}]}}}

    failed = {"id": "batch_req_1", "custom_id": "req-1", "response": None,
              "error": {"code": "rate_limit_exceeded", "message": "slow down"}}
    jsonl(tmp_path / "batch_output.jsonl", answer(2, "two"), failed, answer(0, "zero"))  # out of order, one failed
    notes: list[str] = []
    prompts = load_corpus(tmp_path, domain_field="body.metadata.route", notes=notes)
    assert [(p.id, p.domain, p.messages[0].content, p.response) for p in prompts] == [
        ("req-2", "chat", "q2", "two"), ("req-0", "chat", "q0", "zero")]  # output order
    assert notes == ["batch logs: left out 1 failed request(s) and 1 request(s) with no output line"]
    assert prompts[0].source.endswith("batch_output.jsonl:1")
    # the input file alone is an ordinary prompt corpus: its prompts are generated for
    alone = load_corpus(tmp_path / "batch_input.jsonl")
    assert len(alone) == 4 and all(p.response is None for p in alone)


def test_chat_completion_records_and_tables_with_a_response(tmp_path):
    jsonl(tmp_path / "chat.jsonl",
          {"messages": [{"role": "user", "content": "hi"}], "response": "hello", "domain": "chat"},
          {"messages": [{"role": "user", "content": "hi"}], "choices": [{"message": {"content": "yo"}}]},
          {"prompt": "def f(", "choices": [{"text": "x):"}]},  # the completions API
          {"messages": [{"role": "user", "content": "hey"}], "response": {"choices": [{"message": {"content": "a"}}]}})
    (tmp_path / "t.csv").write_text('id,prompt,response\nc1,say hi,hi\n')
    pd.DataFrame({"id": ["p1"], "messages": [json.dumps([{"role": "user", "content": "q"}])],
                  "response": ["a"]}).to_parquet(tmp_path / "u.parquet")
    prompts = load_corpus(tmp_path)
    assert [(p.id, p.domain, p.response) for p in prompts] == [
        ("chat-1", "chat", "hello"), ("chat-2", "default", "yo"), ("chat-3", "default", "x):"),
        ("chat-4", "default", "a"), ("c1", "default", "hi"), ("p1", "default", "a")]
    assert prompts[0].as_record()["response"] == "hello"
    _, mode = choose_responses(prompts, None)
    assert mode == "logged"  # every record has a response


def test_generate_drops_the_responses_and_mixed_corpora_are_refused(tmp_path):
    f = jsonl(tmp_path / "mixed.jsonl", {"id": "a", "prompt": "x", "response": "y"}, {"id": "b", "prompt": "z"})
    prompts = load_corpus(f)
    bare, mode = choose_responses(prompts, "generate")
    assert mode == "generate" and [p.response for p in bare] == [None, None]
    with pytest.raises(SpecprofError, match=r"mixed.jsonl:2: no response, while 1 other record\(s\) have one"):
        choose_responses(prompts, None)
    with pytest.raises(SpecprofError, match="mixed.jsonl:2: --responses logged: this record has no response"):
        choose_responses(prompts, "logged")


@pytest.mark.parametrize(
    "lines, message",
    [
        ([{"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "x"}]}],
         "log.jsonl:1: conversations[1] has unknown \"from\" 'robot'"),
        ([{"id": "a", "prompt": "x", "response": "y"}, {"conversations": [{"from": "human", "value": "hi"}]}],
         "log.jsonl:2: the conversation has no assistant turn"),
        ([{"messages": [{"role": "user", "content": "x"}], "choices": []}], "log.jsonl:1: no response text"),
        ([{"messages": [{"role": "user", "content": "x"}], "choices": [{"message": {"content": None}}]}],
         "log.jsonl:1: choices[0] has no text content"),
        ([{"custom_id": "r1", "response": {"status_code": 200, "body": {"choices": []}}}],
         "log.jsonl:1: batch output 'r1' has no input line"),
        ([{"id": "a", "prompt": "x", "response": 3}], "log.jsonl:1: \"response\" must be a string"),
        ([{"id": "a", "prompt": "x", "meta": {}}], "log.jsonl:1: no field 'meta.route' (--domain-field)"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, lines, message, cli):
    f = jsonl(tmp_path / "log.jsonl", *lines)
    domain_field = ["--domain-field", "meta.route"] if "meta" in lines[0] else []
    r = cli("profile", f, *domain_field, "--out", tmp_path / "out")
    assert r.exit_code == 2, r.output
    assert message in r.stderr
