"""A small client for a running vLLM server's OpenAI-compatible HTTP API (standard library only).

What `verify --engine vllm` needs from a server, and nothing else:
  - `/health` (200 when the engine is up) and `/version`;
  - `/v1/models`: the served model's name, and `/detokenize` to compare its tokenizer with the
    report's (ids → text, so two tokenizers with one name but other vocabularies are told apart);
  - `/v1/completions` with `prompt` as a list of token ids (no chat template, no re-tokenization),
    greedy or sampled, `"return_token_ids": true` so the generated ids come back as ids;
  - `/metrics`: vLLM's speculative-decoding counters, summed over engines:
        vllm:spec_decode_num_drafts_total                      steps whose proposer returned tokens
        vllm:spec_decode_num_draft_tokens_total                tokens proposed
        vllm:spec_decode_num_accepted_tokens_total             tokens accepted
        vllm:spec_decode_num_accepted_tokens_per_pos_total{position="i"}   accepted at draft position i
    (vLLM 0.32.0: `vllm/v1/spec_decode/metrics.py`, `SpecDecodingProm`). They are counters since
    the server started, so a run's figures are the difference of two reads.

Every failure is one `SpecprofError` line naming the URL and what to do. No torch, no vllm import.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from specprof.errors import SpecprofError

DRAFTS = "vllm:spec_decode_num_drafts_total"
DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens_total"
ACCEPTED = "vllm:spec_decode_num_accepted_tokens_total"
ACCEPTED_PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos_total"
# The first release whose V1 engine exports all four counters above is older than this; it is the one
# specprof's conventions were checked against (scheduler, n-gram proposer and metrics code).
CHECKED_VERSION = "0.32.0"
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class SpecCounters:
    """vLLM's speculative-decoding counters (a read of /metrics, or the difference of two reads)."""

    num_drafts: int
    num_draft_tokens: int
    num_accepted_tokens: int
    num_accepted_tokens_per_pos: tuple[int, ...]  # [num_speculative_tokens]: accepted at draft position i

    def minus(self, before: SpecCounters) -> SpecCounters:
        n = max(len(self.num_accepted_tokens_per_pos), len(before.num_accepted_tokens_per_pos))
        pad = lambda v: tuple(v) + (0,) * (n - len(v))  # noqa: E731
        return SpecCounters(
            self.num_drafts - before.num_drafts,
            self.num_draft_tokens - before.num_draft_tokens,
            self.num_accepted_tokens - before.num_accepted_tokens,
            tuple(a - b for a, b in zip(pad(self.num_accepted_tokens_per_pos),
                                        pad(before.num_accepted_tokens_per_pos))),
        )

    @property
    def k(self) -> int:
        """The server's num_speculative_tokens, as the per-position counters show it."""
        return len(self.num_accepted_tokens_per_pos)

    def as_dict(self) -> dict:
        return {
            "num_drafts": self.num_drafts,
            "num_draft_tokens": self.num_draft_tokens,
            "num_accepted_tokens": self.num_accepted_tokens,
            "num_accepted_tokens_per_pos": list(self.num_accepted_tokens_per_pos),
        }


def parse_metrics(text: str, where: str = "/metrics") -> SpecCounters | None:
    """The spec-decode counters in a Prometheus text exposition, summed over label sets (engines).

    None when the server exports no spec-decode metric at all (it runs without speculation: vLLM
    registers them only with a speculative config). A server that exports some but not these four
    is older than the counters' introduction: an error naming the version checked.

    Example: the lines
        vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 12.0
        vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="1"} 4.0
    give num_drafts 12 and num_accepted_tokens_per_pos[1] = 4.
    """
    totals = {DRAFTS: 0.0, DRAFT_TOKENS: 0.0, ACCEPTED: 0.0}
    seen: set[str] = set()
    per_pos: dict[int, float] = {}
    any_spec = False
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        if name.startswith("vllm:spec_decode"):
            any_spec = True
        if name not in totals and name != ACCEPTED_PER_POS:
            continue
        try:
            number = float(value)
        except ValueError:
            raise SpecprofError(f"{where}: unreadable value {value!r} for {name}") from None
        seen.add(name)
        if name == ACCEPTED_PER_POS:
            position = dict(_LABEL.findall(labels)).get("position")
            if position is None or not position.isdigit():
                raise SpecprofError(f"{where}: {name} without a numeric position label")
            per_pos[int(position)] = per_pos.get(int(position), 0.0) + number
        else:
            totals[name] += number
    if not any_spec:
        return None
    missing = [n for n in (DRAFTS, DRAFT_TOKENS, ACCEPTED, ACCEPTED_PER_POS) if n not in seen]
    if missing:
        raise SpecprofError(
            f"{where}: the server exports speculative-decoding metrics but not {missing[0]} (a vLLM older than "
            f"its V1 spec-decode counters; upgrade to vLLM {CHECKED_VERSION}, the version specprof is checked with)"
        )
    k = max(per_pos) + 1 if per_pos else 0
    return SpecCounters(
        int(round(totals[DRAFTS])),
        int(round(totals[DRAFT_TOKENS])),
        int(round(totals[ACCEPTED])),
        tuple(int(round(per_pos.get(i, 0.0))) for i in range(k)),
    )


@dataclass(frozen=True)
class Completion:
    token_ids: list[int]  # the generated ids, as vLLM returned them
    finish_reason: str | None  # "stop" (EOS / stop id) or "length" (max_tokens)
    # the response's metrics.speculative_decoding (vLLM ≥ 0.32 with --per-request-spec-decode-metrics), or None
    spec_decode: dict | None = None


@dataclass(frozen=True)
class TopLogprobs:
    """The target's top candidates at one position, from vLLM's own logprobs."""

    chosen: int  # the token vLLM generated there
    candidates: dict[int, float]  # token id → log-probability, the top few

    def margin(self) -> float:
        """Top-1 minus top-2 log-probability (= the logit margin: the softmax's normaliser cancels)."""
        values = sorted(self.candidates.values(), reverse=True)
        return values[0] - values[1] if len(values) > 1 else float("inf")


@dataclass(frozen=True)
class PromptLogprob:
    """The served model at one prompt position, teacher-forced: what `"prompt_logprobs": 1` returns."""

    top1: int  # its argmax there (the rank-1 token; the given token itself when that is rank 1)
    top1_logprob: float  # log-probability of its argmax (raw logits, before any temperature)
    given_logprob: float  # log-probability of the prompt's own token there


class VllmClient:
    """One server at `url` (e.g. http://127.0.0.1:8000); each call waits at most `timeout_s`."""

    def __init__(self, url: str, timeout_s: float = 120.0):
        self.url = url.rstrip("/")
        if not re.match(r"^https?://", self.url):
            raise SpecprofError(f"--url {url}: not an http(s) URL (e.g. http://127.0.0.1:8000)")
        self.timeout_s = timeout_s
        self._model: str | None = None
        self._answered = False  # once it has answered, a lost connection means the server died

    # -- transport ---------------------------------------------------------------------------
    def _request(self, path: str, body: dict | None = None, timeout_s: float | None = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="GET" if body is None else "POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except (urllib.error.URLError, OSError) as e:  # refused, reset, DNS, timeout
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError) or isinstance(e, TimeoutError):
                raise SpecprofError(f"--url {self.url}: no answer to {path} within {timeout_s or self.timeout_s:g} s "
                                    "(the server hung or is overloaded)") from None
            if self._answered:
                raise SpecprofError(f"--url {self.url}: the server stopped answering ({reason}) at {path}; it died "
                                    "or restarted (see its log)") from None
            raise SpecprofError(f"--url {self.url}: unreachable ({reason}); is a vLLM server running there?") from None
        self._answered = True
        return status, raw

    def _json(self, path: str, body: dict | None = None, timeout_s: float | None = None) -> dict:
        status, raw = self._request(path, body, timeout_s)
        if status != 200:
            text = raw.decode(errors="replace")
            try:
                text = json.loads(text).get("error", {}).get("message", text) if text.startswith("{") else text
            except (ValueError, AttributeError):
                pass
            raise SpecprofError(f"--url {self.url}: {path} answered HTTP {status} ({str(text).strip()[:200]})")
        try:
            return json.loads(raw)
        except ValueError:
            raise SpecprofError(f"--url {self.url}: {path} did not answer JSON; is this a vLLM server?") from None

    # -- endpoints ---------------------------------------------------------------------------
    def healthy(self) -> bool:
        try:
            status, _ = self._request("/health", timeout_s=min(self.timeout_s, 10.0))
        except SpecprofError:
            return False
        return status == 200

    def wait_healthy(self, timeout_s: float, alive: Callable[[], str | None] | None = None,
                     poll_s: float = 1.0) -> None:
        """Poll /health until 200. `alive()` returns why the server can never come up (it exited), or None."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.healthy():
                return
            if alive is not None:
                why = alive()
                if why:
                    raise SpecprofError(why)
            if time.monotonic() >= deadline:
                raise SpecprofError(f"--url {self.url}: not healthy after {timeout_s:g} s")
            time.sleep(poll_s)

    def version(self) -> str | None:
        try:
            return str(self._json("/version").get("version"))
        except SpecprofError:
            return None

    def model(self) -> str:
        """The served model's name (the first in /v1/models; a plain `vllm serve` serves one)."""
        if self._model is None:
            data = self._json("/v1/models").get("data") or []
            if not data:
                raise SpecprofError(f"--url {self.url}: /v1/models lists no model")
            self._model = str(data[0]["id"])
        return self._model

    def detokenize(self, ids: Sequence[int]) -> str:
        return str(self._json("/detokenize", {"model": self.model(), "tokens": [int(i) for i in ids]})["prompt"])

    def metrics(self) -> SpecCounters | None:
        status, raw = self._request("/metrics")
        if status != 200:
            raise SpecprofError(f"--url {self.url}: /metrics answered HTTP {status} (vLLM serves it by default; "
                                "was it disabled?)")
        return parse_metrics(raw.decode(errors="replace"), f"--url {self.url}/metrics")

    def complete(self, prompt_ids: Sequence[int], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None, logprobs: int | None = None,
                 ignore_eos: bool = False) -> tuple[Completion, list[TopLogprobs]]:
        """Generate from token ids. Every sampling knob is set, so the model's generation_config cannot
        add a top_k or a repetition penalty the report did not use."""
        body = {
            "model": self.model(), "prompt": [int(i) for i in prompt_ids], "max_tokens": int(max_tokens),
            "temperature": float(temperature), "top_p": float(top_p), "top_k": 0, "min_p": 0.0,
            "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
            "return_token_ids": True, "skip_special_tokens": False,
        }
        if seed is not None:
            body["seed"] = int(seed)
        if ignore_eos:  # go on past EOS (and the generation config's stop ids) up to max_tokens
            body["ignore_eos"] = True
        if logprobs is not None:
            body["logprobs"] = int(logprobs)
            body["return_tokens_as_token_ids"] = True
        response = self._json("/v1/completions", body)
        choice = (response.get("choices") or [None])[0]
        if not choice or choice.get("token_ids") is None:
            raise SpecprofError(f"--url {self.url}: /v1/completions returned no token_ids (\"return_token_ids\" "
                                f"needs a newer vLLM; checked with {CHECKED_VERSION})")
        tops = []
        if logprobs is not None and choice.get("logprobs"):
            for chosen, top in zip(choice["token_ids"], choice["logprobs"].get("top_logprobs") or []):
                tops.append(TopLogprobs(int(chosen), {_token_id(t): float(v) for t, v in (top or {}).items()}))
        spec = (response.get("metrics") or {}).get("speculative_decoding")
        return Completion([int(t) for t in choice["token_ids"]], choice.get("finish_reason"),
                          spec if isinstance(spec, dict) else None), tops

    def prompt_logprobs(self, ids: Sequence[int]) -> list[PromptLogprob | None]:
        """Teacher-forced: at every position of `ids` (None at position 0, which nothing predicts) the
        model's argmax and the log-probabilities of it and of ids[t]. One generated token is discarded
        (vLLM refuses max_tokens 0)."""
        body = {"model": self.model(), "prompt": [int(i) for i in ids], "max_tokens": 1, "temperature": 0.0,
                "prompt_logprobs": 1, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0}
        response = self._json("/v1/completions", body)
        choice = (response.get("choices") or [None])[0]
        entries = (choice or {}).get("prompt_logprobs")
        if not isinstance(entries, list) or len(entries) != len(ids):
            raise SpecprofError(f"--url {self.url}: /v1/completions returned no prompt_logprobs for the {len(ids)} "
                                f"prompt tokens (\"prompt_logprobs\" needs vLLM; checked with {CHECKED_VERSION})")
        where = f"--url {self.url}/v1/completions"
        return [_prompt_position(e, int(t), where) for e, t in zip(entries, ids)]

    def max_model_len(self) -> int | None:
        """The context the server accepts (`--max-model-len`), as /v1/models reports it."""
        data = self._json("/v1/models").get("data") or [{}]
        value = data[0].get("max_model_len")
        return int(value) if isinstance(value, int) and value > 0 else None


def _prompt_position(entry: dict | None, given: int, where: str) -> PromptLogprob | None:
    """One position of vLLM's `prompt_logprobs`: {"<id>": {"logprob", "rank", ...}} holding the given
    token and the rank-1 token (one entry when they are the same)."""
    if entry is None:
        return None
    try:
        ranked = {int(t): (float(v["logprob"]), int(v["rank"])) for t, v in entry.items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise SpecprofError(f"{where}: unreadable prompt_logprobs entry {str(entry)[:120]} (checked with vLLM "
                            f"{CHECKED_VERSION})") from None
    if given not in ranked:
        raise SpecprofError(f"{where}: prompt_logprobs lack the prompt's own token {given} (checked with vLLM "
                            f"{CHECKED_VERSION})")
    top = [t for t, (_, rank) in ranked.items() if rank == 1]
    if given in top:  # the given token is the argmax (vLLM ranks a tie by strictly greater logprobs)
        best = given
    else:
        best = top[0] if top else max(ranked, key=lambda t: ranked[t][0])
    return PromptLogprob(best, ranked[best][0], ranked[given][0])


def _token_id(text: str) -> int:
    """`return_tokens_as_token_ids` spells each token as "token_id:123"."""
    return int(text.rsplit(":", 1)[1]) if text.startswith("token_id:") else -1
