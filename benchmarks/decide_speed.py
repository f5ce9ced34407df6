"""How fast `recommend`, `gate` and `compare` answer on a large report, against reading its tokens alone.

Builds a synthetic greedy report of ~1M token rows (2 drafts × 4,000 prompts × 125 positions in 13
domains; each prompt's match rate drawn from Beta(3, 2), the draft's top-1 probability from Beta(5, 2)
where it matches and Beta(2, 5) where not), then times, in fresh processes as a CI
job would run them, each once per round (interleaved: load from other jobs hits them alike):
`specprof recommend --json` (and with `--per-request`: the spreads over requests and the acceptance by
context, issue 24), `specprof gate`, `specprof compare`, and as the
baseline `python -c "pandas.read_parquet(tokens.parquet)"` (Python start-up + imports + reading the
same file), and Python start-up with specprof's imports. Also the in-process time of load + trace +
bootstrap. No torch involved. Timings on a busy shared machine are unreliable: compare the ratios,
each the median of a command's times over the median of the baseline's (timed first and last in
every round).

specprof's modules are compiled to bytecode first, as `pip install` leaves them and pandas' are:
with PYTHONDONTWRITEBYTECODE set (as on our build machines) an editable install would otherwise
compile every module anew in every run, about 0.1 s the baseline does not pay.

    python benchmarks/decide_speed.py [--prompts 4000] [--positions 125] [--repeats 5]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the CLI sets it for these commands (see cli.py)

import argparse
import compileall
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from processes import rounds

from specprof.core.answers import decide
from specprof.core.answers.analysis import load_analysis
from specprof.core.records import reportfiles, schema

DOMAINS = [f"domain-{i:02d}" for i in range(13)]


def build_report(directory: Path, n_prompts: int, n_positions: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    frames = []
    for draft in ("draft-a", "draft-b"):
        rate = rng.beta(3.0, 2.0, size=n_prompts)
        match = rng.random((n_prompts, n_positions)) < rate[:, None]
        n = n_prompts * n_positions
        frames.append(pd.DataFrame({
            "draft": draft,
            "prompt_id": np.repeat([f"p{i:06d}" for i in range(n_prompts)], n_positions),
            "domain": np.repeat([DOMAINS[i % len(DOMAINS)] for i in range(n_prompts)], n_positions),
            "position": np.tile(np.arange(n_positions, dtype=np.int32), n_prompts),
            "target_token": rng.integers(0, 50000, n).astype(np.int32),
            "draft_token": rng.integers(0, 50000, n).astype(np.int32),
            "match": match.ravel(),
            "accept_prob": match.ravel().astype(np.float32),
            "target_p": np.ones(n, np.float32),
            "draft_q": np.ones(n, np.float32),
            "target_entropy": np.zeros(n, np.float32),
            # confidence that tells matches from mismatches, as a trained draft's does: threshold policies vary
            "draft_top1_p": np.where(match.ravel(), rng.beta(5.0, 2.0, n), rng.beta(2.0, 5.0, n)).astype(np.float32),
        }))
    tokens = pd.concat(frames, ignore_index=True)
    reportfiles.write_table(directory / "tokens.parquet", tokens, "tokens")
    # prompts of 20..2,000 tokens: `recommend --per-request` reads their lengths for acceptance by context
    reportfiles.write_table(directory / "prompts.parquet", pd.DataFrame({
        "prompt_id": [f"p{i:06d}" for i in range(n_prompts)],
        "domain": [DOMAINS[i % len(DOMAINS)] for i in range(n_prompts)],
        "prompt": "x", "messages": None,
        "prompt_tokens": [np.ones(n, dtype=np.int32) for n in rng.integers(20, 2000, n_prompts)],
        "n_generated": n_positions, "finish_reason": "length", "min_margin": 1.0,
    }), "prompts")
    reportfiles.write_json(directory / "run.json", {
        "schema_version": schema.SCHEMA_VERSION,
        "target": {"name": "synthetic", "fingerprint": "synthetic"},
        "settings": {"k_max": 8, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": n_positions,
                     "chat_template": True},
        "timings": {"target_forward_s": [0.020 + 0.0005 * n for n in range(9)],
                    "draft_step_s": {"draft-a": 0.002, "draft-b": 0.004}, "context_tokens": 256},
        "finished_at": "2025-01-01T00:00:00+00:00",
    })
    return len(tokens)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=4000)
    ap.add_argument("--positions", type=int, default=125)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import specprof

    compileall.compile_dir(Path(specprof.__file__).parent, quiet=1)  # see the module docstring
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "report"
        rows = build_report(path, args.prompts, args.positions)
        cli = [sys.executable, "-m", "specprof"]
        read = f"import pandas; pandas.read_parquet({str(path / 'tokens.parquet')!r})"
        timed = rounds({
            "baseline": [sys.executable, "-c", read],
            "startup": [sys.executable, "-c", "import specprof.ui.cli, specprof.core.answers.decide"],
            "recommend": [*cli, "recommend", str(path), "--json"],
            "recommend_per_request": [*cli, "recommend", str(path), "--json", "--per-request"],
            "gate": [*cli, "gate", str(path), "--min-speedup", "1.0"],
            "compare": [*cli, "compare", str(path), str(path)],
            "baseline_again": [sys.executable, "-c", read],
        }, args.repeats)
        base = timed.pop("baseline_again")[0] + timed["baseline"][0]
        median = {name: statistics.median(times) for name, (times, _) in timed.items()}
        median["baseline"] = statistics.median(base)
        # The ratio of medians, the baseline timed at both ends of every round. One read's time swings 2× from
        # run to run on a busy 2-core machine (0.51–1.04 s in one 8-round run with one core taken), and a
        # ratio to the single read of each round carried that swing into every ratio, upward more than down.
        ratio = {name: median[name] / median["baseline"] for name in timed}
        # the earlier figure, kept for comparison: the median over rounds of the ratio to that round's first read
        per_round = {name: statistics.median(t / b for t, b in zip(times, timed["baseline"][0]))
                     for name, (times, _) in timed.items()}
        baseline, startup = median["baseline"], median["startup"]
        recommend, gate, compare = median["recommend"], median["gate"], median["compare"]
        rc_r, rc_g, rc_c = timed["recommend"][1], timed["gate"][1], timed["compare"][1]
        in_process, with_policies = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            decide.estimates(load_analysis(path))
            in_process.append(time.perf_counter() - start)
            start = time.perf_counter()
            analysis = load_analysis(path, policies=True)
            decide.policy_estimates(analysis, decide.estimates(analysis))
            with_policies.append(time.perf_counter() - start)
        inproc = statistics.median(in_process)
        policies = statistics.median(with_policies)

    table = [
        ("token rows", f"{rows:,}"),
        ("prompts × drafts", f"{args.prompts} × 2, {len(DOMAINS)} domains, k = 1..8"),
        ("baseline: python + read tokens.parquet", f"{baseline:.2f} s"),
        ("python + import specprof.ui.cli, decide", f"{startup:.2f} s"),
        ("specprof recommend --json", f"{recommend:.2f} s ({ratio['recommend']:.2f}× baseline), exit {rc_r}"),
        ("specprof recommend --json --per-request", f"{median['recommend_per_request']:.2f} s "
         f"({ratio['recommend_per_request']:.2f}× baseline), exit {timed['recommend_per_request'][1]}"),
        ("specprof gate --min-speedup 1.0", f"{gate:.2f} s ({ratio['gate']:.2f}× baseline), exit {rc_g}"),
        ("specprof compare A A", f"{compare:.2f} s ({ratio['compare']:.2f}× baseline), exit {rc_c}"),
        ("in-process load + trace + bootstrap", f"{inproc:.2f} s"),
        ("  + threshold policies (9 τ × k_max 2..8)", f"{policies:.2f} s ({policies / inproc:.1f}× without)"),
    ]
    emit(table, {"ratios": ratio, "ratios_per_round": per_round,
                 "rows": rows, "baseline_s": baseline, "startup_s": startup, "recommend_s": recommend, "gate_s": gate,
                 "compare_s": compare, "in_process_s": inproc, "in_process_policies_s": policies,
                 "repeats": args.repeats})


def emit(table: list[tuple[str, str]], record: dict) -> None:
    width = max(len(k) for k, _ in table)
    for key, value in table:
        print(f"{key:<{width}}  {value}")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
