"""Traffic logs as a corpus: prompts that carry the response the served target gave them.

Accepted shapes, one JSON object per `.jsonl` line (plain `{"prompt" | "messages", "response"}`
records in `.jsonl`, `.csv` and `.parquet` are read by `corpus` itself):
  chat completion   {"messages": [...], "response": "text"} or with the API's answer,
                    {"messages": [...], "choices": [{"message": {"content": "text"}}]} (or
                    "response": {"choices": [...]}); completions' {"prompt", "choices": [{"text"}]} too
  ShareGPT          {"id"?, "conversations": [{"from": "human" | "gpt" | "system", "value": "text"}, ...]}:
                    each assistant turn is one record, a response to every turn before it
                    (id `ID#N` for the N-th assistant turn when there are several)
  OpenAI batch      input lines {"custom_id", "body": {"messages": [...]}} and output lines
                    {"custom_id", "response": {"status_code", "body": {"choices": [...]}}, "error"},
                    joined by custom_id across the files of the corpus (give the directory holding both);
                    failed requests (an error, or a status other than 200) are left out and counted.
A record's domain is the field `--domain-field` names (a dotted path such as `metadata.route`; for
a batch, looked up on the input line, then the output line), else its "domain", else "default".

Also here: the choice between the logged responses and generating (`choose_responses`), and the
agreement of logged tokens with the target's greedy choice (`Agreement`), which decides whether a
T = 0 profile can use them. Shapes are turned into plain records; `corpus` validates them and
names `file:line` in every error. No torch here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from specprof.errors import SpecprofError

Responses = Literal["logged", "generate"]
MIN_USED_FRACTION = 0.1  # refuse a T = 0 profile that could use less than this share of the logged tokens
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "model": "assistant", "system": "system", "tool": "tool"}

Record = tuple[dict[str, Any], str]  # (a PROMPTS-format record with "response", "file:line")


def lookup(obj: Any, path: str) -> Any:
    """The value at a dotted path (`metadata.route`), None if absent; a key holding the whole path wins (CSV)."""
    if isinstance(obj, dict) and path in obj:
        return obj[path]
    for key in path.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def domain_of(objs: Sequence[Any], domain_field: str | None, where: str) -> Any:
    """The domain named by `domain_field` in the first of `objs` that has it; without a field, "domain"."""
    if domain_field is None:
        return next((o["domain"] for o in objs if isinstance(o, dict) and "domain" in o), None)
    for obj in objs:
        value = lookup(obj, domain_field)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise SpecprofError(f"{where}: --domain-field {domain_field}: expected a string, got "
                                    f"{type(value).__name__}")
            return str(value)
    raise SpecprofError(f"{where}: no field {domain_field!r} (--domain-field); give every record one")


def is_log(obj: dict[str, Any]) -> bool:
    """A JSON line in one of the log shapes (rather than a plain PROMPTS record)."""
    return "conversations" in obj or "custom_id" in obj or "choices" in obj or isinstance(obj.get("response"), dict)


def response_text(obj: dict[str, Any], where: str) -> str:
    """The text of a chat-completion record's response: "response" (text or API answer) or "choices"."""
    answer = obj.get("response")
    if isinstance(answer, str):
        return answer
    if isinstance(answer, dict):
        answer = answer.get("body", answer)  # a batch output's response wraps the answer in "body"
        choices = answer.get("choices") if isinstance(answer, dict) else None
    else:
        choices = obj.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise SpecprofError(f"{where}: no response text (expected \"response\": \"...\" or "
                            "\"choices\": [{\"message\": {\"content\": \"...\"}}])")
    first = choices[0]
    text = first["message"].get("content") if isinstance(first.get("message"), dict) else first.get("text")
    if isinstance(text, list):
        text = _text_parts(text, where, "choices[0].message.content")
    if not isinstance(text, str):
        raise SpecprofError(f"{where}: choices[0] has no text content (a tool call or refusal?)")
    return text


def _text_parts(parts: list[Any], where: str, what: str) -> str:
    """OpenAI content parts [{"type": "text", "text": ...}] → their text joined; other parts are refused."""
    texts = []
    for part in parts:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise SpecprofError(f"{where}: {what} holds a non-text part (only text is profiled)")
        texts.append(part["text"])
    return "".join(texts)


def _messages(raw: Any, where: str) -> Any:
    """Chat messages with content parts joined into text (validation is `corpus`'s)."""
    if not isinstance(raw, list):
        return raw
    out = []
    for i, m in enumerate(raw):
        if isinstance(m, dict) and isinstance(m.get("content"), list):
            m = {**m, "content": _text_parts(m["content"], where, f"messages[{i}].content")}
        out.append(m)
    return out


def chat_record(obj: dict[str, Any], where: str, default_id: str, domain_field: str | None) -> Record:
    """A chat-completion log line → one record."""
    record: dict[str, Any] = {"id": obj.get("id", default_id), "response": response_text(obj, where)}
    if "messages" in obj:
        record["messages"] = _messages(obj["messages"], where)
    elif "prompt" in obj:
        record["prompt"] = obj["prompt"]
    else:
        raise SpecprofError(f"{where}: a logged response needs its \"messages\" (or \"prompt\")")
    domain = domain_of([obj], domain_field, where)
    if domain is not None:
        record["domain"] = domain
    return record, where


def sharegpt_records(obj: dict[str, Any], where: str, default_id: str, domain_field: str | None) -> list[Record]:
    """A ShareGPT conversation → one record per assistant turn, each answering all the turns before it."""
    turns = obj["conversations"]
    if not isinstance(turns, list) or not turns:
        raise SpecprofError(f"{where}: \"conversations\" must be a non-empty list of {{from, value}} objects")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not all(isinstance(turn.get(k), str) for k in ("from", "value")):
            raise SpecprofError(f"{where}: conversations[{i}] must be an object with string \"from\" and \"value\"")
        role = SHAREGPT_ROLES.get(turn["from"].lower())
        if role is None:
            raise SpecprofError(f"{where}: conversations[{i}] has unknown \"from\" {turn['from']!r} "
                                f"(use {', '.join(sorted(SHAREGPT_ROLES))})")
        messages.append({"role": role, "content": turn["value"]})
    # An assistant turn with nothing non-empty before it (a greeting opening the chat) answers no prompt.
    answers = [i for i, m in enumerate(messages)
               if m["role"] == "assistant" and any(p["content"].strip() for p in messages[:i])]
    if not answers:
        raise SpecprofError(f"{where}: the conversation has no assistant turn (\"from\": \"gpt\") after a prompt")
    base = obj.get("id", default_id)
    domain = domain_of([obj], domain_field, where)
    records = []
    for n, i in enumerate(answers, start=1):
        record = {"id": f"{base}#{n}" if len(answers) > 1 else base, "messages": messages[:i],
                  "response": messages[i]["content"]}
        if domain is not None:
            record["domain"] = domain
        records.append((record, where))
    return records


@dataclass
class BatchJoin:
    """OpenAI batch input and output lines, collected over a corpus's files and joined by custom_id."""

    requests: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)
    outputs: list[tuple[dict[str, Any], str]] = field(default_factory=list)

    def add(self, obj: dict[str, Any], where: str) -> None:
        custom_id = obj["custom_id"]
        if not isinstance(custom_id, str) or not custom_id:
            raise SpecprofError(f"{where}: \"custom_id\" must be a non-empty string")
        if "body" in obj:
            if custom_id in self.requests:
                raise SpecprofError(f"{where}: duplicate custom_id {custom_id!r} "
                                    f"(first at {self.requests[custom_id][1]})")
            self.requests[custom_id] = (obj, where)
        elif "response" in obj or "error" in obj:
            self.outputs.append((obj, where))
        else:
            raise SpecprofError(f"{where}: a batch line needs \"body\" (input) or \"response\" (output)")

    def records(self, domain_field: str | None, notes: list[str]) -> list[Record]:
        """Joined records in output order; with no output lines, the requests alone (prompts to generate for)."""
        if not self.outputs:
            return [self._request_record(obj, where, domain_field) for obj, where in self.requests.values()]
        records, failed, answered = [], 0, set()
        for obj, where in self.outputs:
            custom_id = obj["custom_id"]
            if custom_id in answered:
                raise SpecprofError(f"{where}: a second output line for custom_id {custom_id!r}")
            answered.add(custom_id)
            if custom_id not in self.requests:
                raise SpecprofError(f"{where}: batch output {custom_id!r} has no input line with that custom_id "
                                    "(give the directory holding the batch input .jsonl too)")
            response = obj.get("response")
            if obj.get("error") or not isinstance(response, dict) or response.get("status_code", 200) != 200:
                failed += 1  # a failed request has no response to profile
                continue
            request, request_where = self.requests[custom_id]
            record, _ = self._request_record(request, request_where, domain_field, also=obj, where=where)
            record["response"] = response_text(obj, where)
            records.append((record, where))
        unanswered = len(self.requests) - len(answered & set(self.requests))
        if failed or unanswered:
            notes.append(f"batch logs: left out {failed} failed request(s) and {unanswered} request(s) "
                         "with no output line")
        return records

    @staticmethod
    def _request_record(obj: dict[str, Any], request_where: str, domain_field: str | None,
                        also: dict[str, Any] | None = None, where: str | None = None) -> Record:
        body = obj["body"]
        if not isinstance(body, dict) or ("messages" not in body and "prompt" not in body):
            raise SpecprofError(f"{request_where}: batch input \"body\" needs \"messages\" (or \"prompt\")")
        record: dict[str, Any] = {"id": obj["custom_id"]}
        if "messages" in body:
            record["messages"] = _messages(body["messages"], request_where)
        else:
            record["prompt"] = body["prompt"]
        domain = domain_of([obj, also] if also is not None else [obj], domain_field, where or request_where)
        if domain is not None:
            record["domain"] = domain
        return record, where or request_where


def choose_responses(prompts: Sequence[Any], requested: Responses | None) -> tuple[list[Any], Responses]:
    """Profile the logged responses or generate new ones: `requested`, or logged when every prompt has one.

    `generate` drops the responses, so the run (and its corpus fingerprint) is that of the bare prompts.
    """
    if requested not in (None, "logged", "generate"):
        raise SpecprofError(f"--responses {requested}: use logged or generate")
    with_response = [p for p in prompts if p.response is not None]
    if requested == "generate" or (requested is None and not with_response):
        return [dataclasses.replace(p, response=None) if p.response is not None else p for p in prompts], "generate"
    missing = next((p for p in prompts if p.response is None), None)
    if missing is not None:
        if requested is None:
            raise SpecprofError(f"{missing.source}: no response, while {len(with_response)} other record(s) have "
                                "one (--responses generate to ignore the logged responses)")
        raise SpecprofError(f"{missing.source}: --responses logged: this record has no response")
    return list(prompts), "logged"


@dataclass(frozen=True)
class Agreement:
    """How far the logged responses are the target's greedy trace, pooled over a set of prompts."""

    n_prompts: int
    logged_tokens: int  # response tokens considered (capped at --max-new-tokens)
    agreeing: int  # positions where the logged token equals the target's argmax (teacher-forced on the log)
    used: int  # logged tokens kept: those before each prompt's first disagreement
    cut: int  # prompts whose response disagreed somewhere (used up to the first disagreement)

    @property
    def fraction(self) -> float:
        return self.agreeing / self.logged_tokens if self.logged_tokens else 1.0

    @property
    def used_fraction(self) -> float:
        return self.used / self.logged_tokens if self.logged_tokens else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "fraction": self.fraction}


def pool_agreement(per_prompt: dict[str, dict[str, Any]], domain: str | None = None) -> Agreement:
    """Pool run.json's per-prompt agreement rows ({domain, logged, agree, used}), of one domain or all."""
    rows = [r for r in per_prompt.values() if domain is None or r["domain"] == domain]
    return Agreement(
        n_prompts=len(rows),
        logged_tokens=sum(r["logged"] for r in rows),
        agreeing=sum(r["agree"] for r in rows),
        used=sum(r["used"] for r in rows),
        cut=sum(r["used"] < r["logged"] for r in rows),
    )


def agreement_summary(per_prompt: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What run.json's `logged_responses` holds besides the rows: pooled figures, overall and per domain."""
    domains = list(dict.fromkeys(r["domain"] for r in per_prompt.values()))
    return {"all": pool_agreement(per_prompt).as_dict(),
            "domains": {d: pool_agreement(per_prompt, d).as_dict() for d in domains}}


def check_agreement(agreement: Agreement, greedy: bool) -> None:
    """At T = 0, refuse logs of which almost nothing is the target's greedy trace."""
    if greedy and agreement.logged_tokens and agreement.used_fraction < MIN_USED_FRACTION:
        raise SpecprofError(
            f"logged responses: only {agreement.used} of {agreement.logged_tokens} logged tokens "
            f"({agreement.used_fraction:.0%}) come before the first disagreement with the target's greedy choice "
            f"({agreement.fraction:.0%} of positions agree); a greedy profile needs the target's own greedy output. "
            "Check --target (the served model), the chat template (--no-chat-template if the log holds raw "
            "prompts), or, for sampled traffic, pass --temperature and --top-p as served"
        )


def describe_domains(per_prompt: dict[str, dict[str, Any]], greedy: bool) -> str | None:
    """Per domain, the share of logged positions equal to the target's argmax (and prompts cut at T = 0)."""
    domains = list(dict.fromkeys(r["domain"] for r in per_prompt.values()))
    if len(domains) < 2:
        return None
    parts = []
    for d in domains:
        a = pool_agreement(per_prompt, d)
        parts.append(f"{d} {a.fraction:.1%}" + (f" ({a.cut} of {a.n_prompts} cut)" if greedy else ""))
    return "  per domain: " + ", ".join(parts)


def describe_agreement(agreement: Agreement, greedy: bool) -> str:
    """One line for the terminal."""
    if not greedy:
        return (f"logged responses: {agreement.logged_tokens} tokens of {agreement.n_prompts} prompts taken as "
                f"samples of the served target; {agreement.fraction:.1%} equal its argmax")
    return (f"logged responses: {agreement.fraction:.1%} of {agreement.logged_tokens} logged tokens equal the "
            f"target's greedy choice; used up to the first disagreement: {agreement.used} tokens "
            f"({agreement.cut} of {agreement.n_prompts} prompts cut)")
