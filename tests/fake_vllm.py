"""A stand-in for a vLLM server's HTTP API, in a thread: the endpoints `verify --engine vllm` uses, no model.

It answers a completion for a prompt it knows with the continuation it was given for that prompt,
and adds that prompt's counters to its /metrics, in vLLM 0.32.0's exposition format. Knobs plant
each failure `verify` must report: no speculation, an old vLLM, another tokenizer, a server that
dies or hangs after n requests. With `steps` it returns each request's per-step drafted / accepted
arrays, as vLLM 0.32.0 started with `--per-request-spec-decode-metrics detailed` does.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "/models/target"


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # A client that hung up (a timeout test does so on purpose) is not an error of the server; the
        # default prints a traceback to stderr, into whichever test is capturing it seconds later.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


@dataclass
class FakeVllm:
    decode: object  # ids → text, the served tokenizer
    continuations: dict[tuple[int, ...], list[int]]  # prompt ids → the generated ids
    counters: dict[tuple[int, ...], tuple[int, int, int, tuple[int, ...]]]  # prompt ids → what one request adds
    k: int = 3
    spec: bool = True  # False: a server without --speculative-config (no spec-decode metrics at all)
    old: bool = False  # True: only num_accepted/num_draft_tokens, as an old vLLM exported
    die_after: int | None = None  # close every connection from the completion after this many on
    dead: bool = False
    hang_after: int | None = None  # stall completions after this many
    logprobs: dict[tuple[int, ...], dict[int, float]] = field(default_factory=dict)  # prefix → top logprobs
    # ids [n] → [n, V] log-probabilities (row t predicts ids[t + 1]): a model behind the server. With it the
    # fake generates greedily (ignore_eos, logprobs) and answers prompt_logprobs as vLLM 0.32.0 does.
    model: object = None
    max_model_len: int | None = None  # reported by /v1/models
    # prompt ids → (per_step_drafted, per_step_accepted): answered in metrics.speculative_decoding, as vLLM 0.32.0
    # started with --per-request-spec-decode-metrics detailed does; empty: a server without the option
    steps: dict[tuple[int, ...], tuple[list[int], list[int]]] = field(default_factory=dict)
    totals: list[int] = field(default_factory=lambda: [0, 0, 0])
    per_pos: list[int] = field(default_factory=list)
    completions: int = 0
    requests: list[dict] = field(default_factory=list)
    delay_s: float = 0.0  # each completion takes this long (so concurrent requests overlap)
    in_flight: int = 0  # completions being answered now, and the most at once (verify --concurrency)
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def metrics_text(self) -> str:
        labels = f'engine="0",model_name="{MODEL}"'
        lines = ['# HELP vllm:num_requests_running Number of requests running.',
                 f'vllm:num_requests_running{{{labels}}} 0.0']
        if not self.spec:
            return "\n".join(lines) + "\n"
        names = ["vllm:spec_decode_num_drafts_total", "vllm:spec_decode_num_draft_tokens_total",
                 "vllm:spec_decode_num_accepted_tokens_total"]
        for i, name in enumerate(names):
            if self.old and i == 0:
                continue
            lines += [f"# TYPE {name} counter", f"{name}{{{labels}}} {float(self.totals[i])}",
                      f"{name.replace('_total', '_created')}{{{labels}}} 1.7e9"]
        if not self.old:
            name = "vllm:spec_decode_num_accepted_tokens_per_pos_total"
            per_pos = self.per_pos or [0] * self.k
            lines += [f'{name}{{{labels},position="{i}"}} {float(v)}' for i, v in enumerate(per_pos)]
        return "\n".join(lines) + "\n"

    def complete(self, body: dict) -> dict:
        prompt = tuple(body["prompt"])
        if self.model is not None:
            self.completions += 1
            return self.model_complete(body)
        if body.get("max_tokens") == 1 and body.get("logprobs"):  # verify asking for the target's margin
            top = self.logprobs.get(prompt, {})
            chosen = max(top, key=top.get) if top else 0
            return {"choices": [{"token_ids": [chosen], "finish_reason": "length",
                                 "logprobs": {"top_logprobs": [{f"token_id:{t}": v for t, v in top.items()}]}}]}
        with self.lock:  # concurrent requests (verify --concurrency) add to the counters one at a time
            self.completions += 1
            drafts, draft_tokens, accepted, per_pos = self.counters[prompt]
            self.totals = [self.totals[0] + drafts, self.totals[1] + draft_tokens, self.totals[2] + accepted]
            self.per_pos = [a + b for a, b in zip(self.per_pos or [0] * self.k, per_pos)]
        out = self.continuations[prompt][: body["max_tokens"]]
        response = {"choices": [{"index": 0, "text": "", "token_ids": out, "finish_reason": "length"}]}
        if prompt in self.steps:
            drafted, accepted = self.steps[prompt]
            histogram = [accepted.count(j) for j in range(self.k + 1)]
            response["metrics"] = {"speculative_decoding": {
                "mean_acceptance_length": 1 + sum(accepted) / len(accepted) if accepted else 1.0,
                "draft_acceptance_rate": sum(accepted) / sum(drafted) if sum(drafted) else 0.0,
                "acceptance_histogram": histogram, "num_spec_steps": len(accepted),
                "num_accepted_draft_tokens": sum(accepted), "num_draft_tokens": sum(drafted),
                "num_spec_tokens": self.k, "per_step_accepted": list(accepted), "per_step_drafted": list(drafted)}}
        return response

    def model_complete(self, body: dict) -> dict:
        """Greedy generation and prompt_logprobs from `model`, in vLLM 0.32.0's response shapes."""
        ids = [int(i) for i in body["prompt"]]
        eos = {2}
        out, tops = [], []
        while len(out) < body["max_tokens"]:
            row = self.model(ids + out)[-1]
            order = sorted(range(len(row)), key=lambda v: -row[v])
            chosen = order[0]
            top = {f"token_id:{v}": float(row[v]) for v in [chosen, *order[: body.get("logprobs") or 0]]}
            out.append(chosen)
            tops.append(top)
            if chosen in eos and not body.get("ignore_eos"):
                break
        choice = {"index": 0, "text": "", "token_ids": out,
                  "finish_reason": "stop" if out and out[-1] in eos and not body.get("ignore_eos") else "length"}
        if body.get("logprobs"):
            choice["logprobs"] = {"top_logprobs": tops}
        if body.get("prompt_logprobs"):
            rows = self.model(ids)
            entries = [None]
            for t in range(1, len(ids)):
                row, given = rows[t - 1], ids[t]
                best = max(range(len(row)), key=lambda v: row[v])
                rank = 1 + sum(1 for v in row if v > row[given])
                entries.append({str(given): {"logprob": float(row[given]), "rank": rank, "decoded_token": "?"},
                                str(best): {"logprob": float(row[best]), "rank": 1, "decoded_token": "?"}}
                               if best != given else
                               {str(given): {"logprob": float(row[given]), "rank": rank, "decoded_token": "?"}})
            choice["prompt_logprobs"] = entries
        return {"choices": [choice]}

    def start(self, port: int = 0) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: str | dict, kind: str = "application/json") -> None:
                data = (json.dumps(body) if isinstance(body, dict) else body).encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _gone(self, completion: bool = False) -> bool:
                fake.dead = fake.dead or (completion and fake.die_after is not None
                                          and fake.completions >= fake.die_after)
                if fake.dead:
                    self.close_connection = True
                    self.connection.close()
                    return True
                return False

            def do_GET(self):
                if self._gone():
                    return
                routes = {"/health": lambda: self._reply(200, ""),
                          "/version": lambda: self._reply(200, {"version": "0.32.0"}),
                          "/v1/models": lambda: self._reply(200, {"data": [
                              {"id": MODEL, **({"max_model_len": fake.max_model_len} if fake.max_model_len else {})}]}),
                          "/metrics": lambda: self._reply(200, fake.metrics_text(), "text/plain")}
                routes.get(self.path, lambda: self._reply(404, {"error": {"message": "not found"}}))()

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self._gone(self.path == "/v1/completions"):
                    return
                fake.requests.append(body)
                if self.path == "/detokenize":
                    self._reply(200, {"prompt": fake.decode(body["tokens"])})
                elif self.path == "/v1/completions":
                    if fake.hang_after is not None and fake.completions >= fake.hang_after:
                        time.sleep(3)
                    with fake.lock:
                        fake.in_flight += 1
                        fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    time.sleep(fake.delay_s)
                    answer = fake.complete(body)
                    with fake.lock:
                        fake.in_flight -= 1
                    self._reply(200, answer)
                else:
                    self._reply(404, {"error": {"message": "not found"}})

        self.server = _Server(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def model_logprobs(directory) -> object:
    """A tiny model directory as the fake's `model`: ids → [n, V] log-probabilities (lists)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()

    def logprobs(ids: list[int]) -> list[list[float]]:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        return torch.log_softmax(logits, dim=-1).tolist()

    return logprobs


def counters_for(i: int, k: int) -> tuple[int, int, int, tuple[int, ...]]:
    """What prompt number i adds to the fake's counters at k: i+4 drafts of k tokens, i+1 accepted at position 0."""
    return (i + 4, k * (i + 4), i + 1, (i + 1,) + (0,) * (k - 1))


def serve_report(report_dir: str, k: int, port: int, spec: bool = True) -> None:
    """Serve a report's own continuations at `port` until killed (the stand-in `python -m vllm…` runs this);
    `spec` False: as a server started without --speculative-config."""
    from specprof.commands import verify_vllm
    from specprof.core.records import reportfiles, tokentext

    report = reportfiles.load_report(report_dir)
    prompts = report.frame("prompts")
    draft = report.run["drafts"][0]["name"]
    tokens = report.frame("tokens")
    continuations = verify_vllm.report_continuations(tokens[tokens["draft"] == draft])
    ids = [tuple(int(t) for t in toks) for toks in prompts["prompt_tokens"]]
    fake = FakeVllm(tokentext.load(report.run).decode,
                    {p: continuations[str(pid)] for p, pid in zip(ids, prompts["prompt_id"])},
                    {p: counters_for(i, k) for i, p in enumerate(ids)}, k=k, spec=spec)
    fake.start(port)
    while True:
        time.sleep(1)
