"""Served check of `recommend --emit vllm-synthetic` on a GPU: vLLM's /metrics show the emitted rates.

Not a CI test: vLLM's CPU build refuses to run synthetic rejection sampling ("Synthetic acceptance
not supported with CPU sampling"), so this runs where vLLM has a GPU. It

1. emits the synthetic config of REPORT at --draft and --k (as `specprof recommend --emit
   vllm-synthetic` does, over the whole corpus or --domain);
2. starts vLLM with it (`--vllm-python`, the report's target) or uses a running server (`--url`,
   which must have been started with that exact config);
3. sends --requests (≥ 32) greedy completions of the report's prompts (cycled), --max-tokens each;
4. reads the speculative counters from /metrics before and after, and checks each position's
   observed rate num_accepted_tokens_per_pos[i] / num_drafts against the binomial 99% interval
   of the emitted rate r_i over that many drafts (normal approximation, exact bounds at 0 and 1).

Exit 0 when every position is inside its interval, 1 otherwise; a JSON record on stdout.

    python scripts/check_synthetic_vllm.py REPORT --draft D --k 3 --vllm-python /path/to/vllm/python
    python scripts/check_synthetic_vllm.py REPORT --draft D --k 3 --url http://localhost:8000
"""

from __future__ import annotations

import argparse
import json
import math
import sys

Z99 = 2.5758293035489  # two-sided 99% normal quantile


def interval(rate: float, n: int) -> tuple[float, float]:
    """Binomial 99% interval of the share of n drafts that accept at a position whose rate is `rate`."""
    if n == 0:
        return 0.0, 1.0
    half = Z99 * math.sqrt(rate * (1.0 - rate) / n) + 0.5 / n  # continuity correction
    return max(0.0, rate - half), min(1.0, rate + half)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report")
    ap.add_argument("--draft", required=True)
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--domain", action="append", default=[])
    ap.add_argument("--url")
    ap.add_argument("--vllm-python")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args()
    if args.requests < 32:
        ap.error("--requests: at least 32")
    if (args.url is None) == (args.vllm_python is None):
        ap.error("give --url or --vllm-python")

    from typer.testing import CliRunner

    from specprof.core.records import reportfiles
    from specprof.engines.vllm import launcher
    from specprof.engines.vllm.client import VllmClient
    from specprof.ui.cli import app

    cmd = ["recommend", args.report, "--emit", "vllm-synthetic", "--draft", args.draft, "--k", str(args.k)]
    for d in args.domain:
        cmd += ["--domain", d]
    emitted = CliRunner().invoke(app, cmd, catch_exceptions=False)
    if emitted.exit_code != 0:
        print(emitted.output, file=sys.stderr)
        return 2
    config = json.loads(emitted.stdout)
    rates = config["synthetic_acceptance_rates"]
    rep = reportfiles.load_report(args.report)
    prompts = [[int(t) for t in ids] for ids in rep.table("prompts", ["prompt_tokens"]).column(0).to_pylist()]

    def run(client: VllmClient) -> dict:
        before = client.metrics()
        for i in range(args.requests):
            client.complete(prompts[i % len(prompts)], args.max_tokens)
        after = client.metrics()
        if before is None or after is None:
            raise SystemExit("the server exposes no speculative-decoding counters: is it speculative?")
        return after.minus(before).as_dict()

    if args.url:
        counters = run(VllmClient(args.url))
    else:
        with launcher.launch(args.vllm_python, rep.run["target"]["source"], config, dtype="auto") as server:
            counters = run(server.client)
    drafts = counters["num_drafts"]
    rows = []
    for i, rate in enumerate(rates):
        observed = counters["num_accepted_tokens_per_pos"][i] / drafts if drafts else float("nan")
        lo, hi = interval(rate, drafts)
        rows.append({"position": i, "emitted": rate, "observed": observed, "lo99": lo, "hi99": hi,
                     "inside": bool(lo <= observed <= hi)})
    ok = drafts > 0 and all(r["inside"] for r in rows)
    print(json.dumps({"config": config, "requests": args.requests, "counters": counters, "positions": rows,
                      "passed": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
