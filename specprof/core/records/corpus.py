"""Read a prompt corpus into `Prompt` records and validate it.

Accepted inputs: `.jsonl` (`{"id", "domain", "prompt"}` or `"messages"` for chat), `.csv` and
`.parquet` with the same columns, `.txt` (one prompt per line, domain = file stem), or a
directory holding any of these (searched recursively, other files ignored). A record may carry
the served target's `"response"`; traffic-log shapes (chat completions, ShareGPT, OpenAI batch
files) are turned into such records by `logs`.

Every problem is raised as `SpecprofError` naming the file and line (`prompts.jsonl:14: missing
field "prompt"`). This module does not tokenize or apply chat templates: prompts are data, and
`models` turns them into token ids. It never imports torch.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specprof.core.records import logs
from specprof.errors import SpecprofError

SUFFIXES = (".jsonl", ".csv", ".parquet", ".txt")
DEFAULT_DOMAIN = "default"
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Prompt:
    id: str
    domain: str
    prompt: str | None  # plain text; exactly one of prompt / messages is set
    messages: tuple[Message, ...] | None
    source: str  # "file:line" where the record was read, for error messages
    response: str | None = None  # the served target's logged response, when the corpus is a traffic log

    def as_record(self) -> dict[str, Any]:
        """The PROMPTS-format JSON object for this prompt (what `.jsonl` files hold)."""
        record: dict[str, Any] = {"id": self.id, "domain": self.domain}
        if self.messages is not None:
            record["messages"] = [{"role": m.role, "content": m.content} for m in self.messages]
        else:
            record["prompt"] = self.prompt
        if self.response is not None:
            record["response"] = self.response
        return record


def load_corpus(
    path: str | Path, domains: Sequence[str] = (), limit: int | None = None, domain_field: str | None = None,
    notes: list[str] | None = None,
) -> list[Prompt]:
    """Load every prompt under `path`, keep `domains` (all when empty) and the first `limit` per domain.

    Order is the corpus order: files sorted by path, records in file order (joined OpenAI batch
    records last, in output order). `domain_field` names the field holding each record's domain
    (`--domain-field`, a dotted path); `notes` collects what the user should be told (records left out).
    """
    path = Path(path)
    if not path.exists():
        raise SpecprofError(f"{path}: no such file or directory")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            raise SpecprofError(f"{path}: no prompt files ({', '.join(SUFFIXES)}) in this directory")
    elif path.suffix.lower() in SUFFIXES:
        files = [path]
    else:
        raise SpecprofError(f"{path}: unsupported prompt file type (use {', '.join(SUFFIXES)})")

    prompts: list[Prompt] = []
    batch = logs.BatchJoin()
    for file in files:
        prompts.extend(_read_file(file, domain_field, batch))
    for record, where in batch.records(domain_field, notes if notes is not None else []):
        prompts.append(_from_record(record, where, "", 0))
    if not prompts:
        raise SpecprofError(f"{path}: the corpus holds no prompts")
    _check_unique_ids(prompts)
    return select(prompts, domains, limit)


def select(prompts: Sequence[Prompt], domains: Sequence[str] = (), limit: int | None = None) -> list[Prompt]:
    """Keep the prompts of `domains` (all when empty), then the first `limit` of each domain."""
    if limit is not None and limit < 1:
        raise SpecprofError(f"--limit {limit}: must be ≥ 1")
    if domains:
        known = {p.domain for p in prompts}
        unknown = [d for d in domains if d not in known]
        if unknown:
            raise SpecprofError(
                f"--domain {unknown[0]}: not in the corpus (domains: {', '.join(sorted(known))})"
            )
        prompts = [p for p in prompts if p.domain in set(domains)]
    if limit is None:
        return list(prompts)
    taken: dict[str, int] = {}
    kept = []
    for p in prompts:
        if taken.get(p.domain, 0) < limit:
            taken[p.domain] = taken.get(p.domain, 0) + 1
            kept.append(p)
    return kept


def fingerprint(prompts: Iterable[Prompt]) -> str:
    """A hash of the selected prompts (ids, domains, texts): a resumed run must see the same corpus."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps(p.as_record(), sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def _read_text(file: Path) -> str:
    try:
        data = file.read_bytes()
    except OSError as e:
        raise SpecprofError(f"{file}: cannot read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise SpecprofError(
            f"{file}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x}); save the file as UTF-8"
        ) from None


def _read_file(file: Path, domain_field: str | None, batch: logs.BatchJoin) -> list[Prompt]:
    suffix = file.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(file, domain_field, batch)
    if suffix == ".txt":
        return _read_txt(file)
    if suffix == ".csv":
        return _read_csv(file, domain_field)
    return _read_parquet(file, domain_field)


def _with_domain(record: dict[str, Any], domain_field: str | None, where: str) -> dict[str, Any]:
    """The record with "domain" taken from `--domain-field` (unchanged without one)."""
    return record if domain_field is None else {**record, "domain": logs.domain_of([record], domain_field, where)}


def _read_jsonl(file: Path, domain_field: str | None, batch: logs.BatchJoin) -> list[Prompt]:
    prompts = []
    for line_no, line in enumerate(_read_text(file).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file}:{line_no}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            # Some decoder messages end in "at" ("Unterminated string starting at"): don't say it twice.
            at = "" if e.msg.endswith(" at") else " at"
            message = f"invalid JSON ({e.msg}{at} column {e.colno}): fix or remove the line"
            raise SpecprofError(f"{where}: {message}") from None
        if not isinstance(obj, dict):
            raise SpecprofError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        default_id = f"{file.stem}-{line_no}"
        if "custom_id" in obj:
            batch.add(obj, where)
        elif "conversations" in obj:
            prompts.extend(_from_record(r, w, file.stem, line_no)
                           for r, w in logs.sharegpt_records(obj, where, default_id, domain_field))
        elif logs.is_log(obj):
            prompts.append(_from_record(*logs.chat_record(obj, where, default_id, domain_field), file.stem, line_no))
        else:
            prompts.append(_from_record(_with_domain(obj, domain_field, where), where, file.stem, line_no))
    return prompts


def _read_txt(file: Path) -> list[Prompt]:
    return [
        Prompt(id=f"{file.stem}-{n}", domain=file.stem, prompt=line, messages=None, source=f"{file}:{n}")
        for n, line in enumerate(_read_text(file).splitlines(), start=1)
        if line.strip()
    ]


def _read_csv(file: Path, domain_field: str | None) -> list[Prompt]:
    reader = csv.DictReader(io.StringIO(_read_text(file), newline=""))
    fields = reader.fieldnames or []
    if "prompt" not in fields and "messages" not in fields:
        raise SpecprofError(f"{file}:1: no \"prompt\" or \"messages\" column (columns: {', '.join(fields)})")
    prompts = []
    previous_end = 1  # the header's line
    try:
        for row in reader:
            where = f"{file}:{previous_end + 1}"
            previous_end = reader.line_num
            if None in row:
                raise SpecprofError(f"{where}: more values than columns")
            record: dict[str, Any] = {k: v for k, v in row.items() if v not in (None, "")}
            if "messages" in record:
                record["messages"] = _parse_messages_json(record["messages"], where)
            if "prompt" in fields and "prompt" not in record and "messages" not in record:
                record["prompt"] = ""
            prompts.append(_from_record(_with_domain(record, domain_field, where), where, file.stem, previous_end))
    except csv.Error as e:
        raise SpecprofError(f"{file}:{reader.line_num}: malformed CSV ({e})") from None
    return prompts


def _read_parquet(file: Path, domain_field: str | None) -> list[Prompt]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise SpecprofError(f"{file}: not a readable parquet file ({e})") from None
    if "prompt" not in table.column_names and "messages" not in table.column_names:
        raise SpecprofError(
            f"{file}: no \"prompt\" or \"messages\" column (columns: {', '.join(table.column_names)})"
        )
    prompts = []
    for row_no, row in enumerate(table.to_pylist(), start=1):
        where = f"{file}:row {row_no}"
        record = {k: v for k, v in row.items() if v is not None}
        if isinstance(record.get("messages"), str):
            record["messages"] = _parse_messages_json(record["messages"], where)
        prompts.append(_from_record(_with_domain(record, domain_field, where), where, file.stem, row_no))
    return prompts


def _parse_messages_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecprofError(f"{where}: \"messages\" is not valid JSON ({e.msg})") from None


def _from_record(obj: dict[str, Any], where: str, stem: str, line_no: int) -> Prompt:
    prompt_id = obj.get("id")
    if prompt_id is None:
        prompt_id = f"{stem}-{line_no}"  # stable while the file is unchanged
    elif isinstance(prompt_id, bool) or not isinstance(prompt_id, (str, int)):
        raise SpecprofError(f"{where}: \"id\" must be a string or an integer")
    prompt_id = str(prompt_id)
    if not prompt_id.strip():
        raise SpecprofError(f"{where}: \"id\" is empty")

    domain = obj.get("domain", DEFAULT_DOMAIN)
    if not isinstance(domain, str) or not domain.strip():
        raise SpecprofError(f"{where}: \"domain\" must be a non-empty string")
    if domain == "ALL":
        raise SpecprofError(f"{where}: domain \"ALL\" is reserved for the whole corpus; rename it")

    response = obj.get("response")
    if response is not None and not isinstance(response, str):
        raise SpecprofError(f"{where}: \"response\" must be a string")
    has_prompt, has_messages = "prompt" in obj, "messages" in obj
    if has_prompt and has_messages:
        raise SpecprofError(f"{where}: give either \"prompt\" or \"messages\", not both")
    if not has_prompt and not has_messages:
        raise SpecprofError(f"{where}: missing field \"prompt\" (or \"messages\" for chat)")
    if has_prompt:
        text = obj["prompt"]
        if not isinstance(text, str):
            raise SpecprofError(f"{where}: \"prompt\" must be a string")
        if not text.strip():
            raise SpecprofError(f"{where}: empty prompt")
        return Prompt(prompt_id, domain, text, None, where, response)
    return Prompt(prompt_id, domain, None, _parse_messages(obj["messages"], where), where, response)


def _parse_messages(raw: Any, where: str) -> tuple[Message, ...]:
    if not isinstance(raw, list) or not raw:
        raise SpecprofError(f"{where}: \"messages\" must be a non-empty list of {{role, content}} objects")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(
            m.get("content"), str
        ):
            raise SpecprofError(f"{where}: messages[{i}] must be an object with string \"role\" and \"content\"")
        if m["role"] not in ROLES:
            raise SpecprofError(f"{where}: messages[{i}] has unknown role {m['role']!r} (use {', '.join(ROLES)})")
        messages.append(Message(m["role"], m["content"]))
    if not any(m.content.strip() for m in messages):
        raise SpecprofError(f"{where}: empty prompt (every message is empty)")
    return tuple(messages)


def _check_unique_ids(prompts: Sequence[Prompt]) -> None:
    seen: dict[str, Prompt] = {}
    for p in prompts:
        if p.id in seen:
            raise SpecprofError(f"{p.source}: duplicate id {p.id!r} (first at {seen[p.id].source})")
        seen[p.id] = p
