"""The read-only commands: recommend, gate, compare, inspect, report.

They read a report (tokens.parquet and run.json), never model weights, and never import torch: CI jobs
run them with nothing heavy installed. Each parses its flags, calls `core.decide` (or `inspection`,
`htmlreport`), and renders what it returns; `gate` returns exit code 1 when a check fails.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from specprof.core import glossary
from specprof.core.vocabulary import ALL
from specprof.errors import SpecprofError
from specprof.ui import inspectview, render, requestview
from specprof.ui.app import check_range, command, print_json, stderr, stdout
from specprof.ui.options import DomainFilter, DraftFilter, Json, Report, Tokenizer

RECOMMEND_HELP = "\n\n".join([
    "Best k, expected speedup with its interval, and GO / NO-GO / INCONCLUSIVE per draft × domain.",
    "At each domain's best k:",
    *glossary.help_paragraphs(),
    "GO when the lower 95% bound of the speedup at the best k reaches --min-speedup; NO-GO when its upper bound "
    "is below 1.0; otherwise INCONCLUSIVE, with about how many more prompts would decide it. Intervals: "
    "bootstrap over prompts (1000 resamples, seed 0), recomputed from tokens.parquet.",
    "Confidence-threshold drafting (T = 0 reports): beside each best k, the best policy 'propose while the draft's "
    "top-1 probability ≥ τ, at most k_max' (transformers' assistant_confidence_threshold) over τ = 0.1..0.9 and "
    "k_max = 2..K. Its tokens/iter is exact; its draft steps after a rejected proposal were not recorded, so its "
    "speedup is a range; it beats fixed k only when the 95% interval of the gain is above 0 at the pessimistic end.",
    "With --alpha and --cost-ratio and no REPORT: the i.i.d. model's k table, best k and breakeven α (what-if).",
    "--engine vllm: the figures vLLM's own metrics will show for these prompts (T = 0 reports, exact): "
    "num_drafts, num_draft_tokens, num_accepted_tokens, per position; mean acceptance length = 1 + accepted / "
    "drafts, per-position acceptance rate = accepted at i / drafts, draft acceptance rate = accepted / drafted. "
    "vLLM samples the first token in prefill, counts no draft where its proposer found nothing, and counts "
    "acceptances past EOS / max_tokens. At each domain's best k, or at --k.",
    "--emit vllm-synthetic | sglang-synthetic | trtllm-synthetic: the engine's synthetic-acceptance setting at the "
    "acceptance of these prompts (vLLM: rejection_sample_method synthetic with synthetic_acceptance_rates, the "
    "per-position rates under vLLM's counting; SGLang: SGLANG_SIMULATE_ACC_LEN = mean acceptance length; "
    "TensorRT-LLM: TLLM_SPEC_DECODE_FORCE_NUM_ACCEPTED_TOKENS = mean acceptance length − 1), over --domain or the "
    "whole corpus, at the recommended draft and k (or --draft and --k): benchmark serving at your acceptance.",
    "The text output ends with the spread over requests (median, p10, p90 of tokens/iter; how many requests lose "
    "under the cost model) and whether acceptance falls with context length or position; --json --per-request "
    "adds them as per_request and context.",
    "--emit vllm | sglang: print only the configuration to paste for the recommended draft and k (vLLM's "
    "--speculative-config JSON, SGLang's flags), or why no domain should enable speculation; --draft, --domain "
    "and --k choose. With one --draft and --k the config is printed even where it is not GO (a note on stderr "
    "says it is not recommended).",
])

GATE_HELP = "\n\n".join([
    "CI check: exit 0 when every check passes, 1 when any fails, 2 for bad input.",
    "--min-speedup and --min-alpha are checked on the lower 95% bootstrap bounds (over prompts) unless --point, "
    "at each domain's best k unless --k. --baseline OLD --max-alpha-drop X fails when α fell by more than X in "
    "any checked domain. Default: every draft, every domain and ALL.",
])

COMPARE_HELP = "\n\n".join([
    "α and speedup of B against A per draft × domain, and whether each difference is significant.",
    "Differences are B − A with 95% bootstrap intervals over prompts (paired when both reports hold the same "
    "prompts); significant (*) when the interval excludes 0 and both reports hold 5+ prompts in the domain "
    "(recommend's rule; a line under the table names those with fewer). Drafts pair by name, or in report order "
    "when no "
    "name is shared (a new checkpoint of one draft). Reports of different targets or sampling settings are "
    "refused unless --force.",
])

INSPECT_HELP = "\n\n".join([
    "Which prompts a draft is bad at, and where in the text it fails.",
    "Ranks the prompts by α (per-prompt acceptance; the match rate at T = 0) and shows the --worst N (default 5) "
    "with their tokens/iter at k (default: the draft's best k) and their continuation token by token: accepted "
    "tokens green, rejected ones (match false: the draft proposed another token, or an n-gram draft nothing) "
    "white on red, ┊ where a "
    "speculative block at k starts. At T > 0 every token is shaded from red to green by accept_prob β and no "
    "blocks are marked. --prompt ID shows one prompt in full with every rejected token and the draft's proposal.",
    "Loads only the target's tokenizer (from the report's run.json, or --tokenizer), never model weights. "
    "--export FILE.jsonl writes the shown prompts as a PROMPTS corpus to profile again or train a draft on.",
])

REPORT_HELP = "\n\n".join([
    "One self-contained HTML page of a report: settings, tables and plots, no network needed to open it.",
    "Per draft: a table per domain (α with its 95% interval, best k, tokens/iter, speedup with its interval, "
    "decision: the figures of recommend --json); plots of α per domain, speedup against k (empirical and "
    "i.i.d.), per-position acceptance r_i and the histogram of accepted tokens per block; the five prompts with "
    "the lowest α, coloured token by token as in inspect. --png DIR also writes each plot as a PNG file.",
])


@command(help=RECOMMEND_HELP)
def recommend(
    report_path: Annotated[Path | None, typer.Argument(
        metavar="REPORT", help="Report directory (or its tokens.parquet/summary.parquet). Omit for what-if.")] = None,
    cost_ratio: Annotated[float | None, typer.Option(
        "--cost-ratio", help="Plan for other hardware: c = draft step / target step, verification as one step.")
    ] = None,
    min_speedup: Annotated[float, typer.Option(
        "--min-speedup", help="GO threshold on the speedup's lower bound.")] = 1.1,
    draft: DraftFilter = None,
    domain: DomainFilter = None,
    alpha: Annotated[float | None, typer.Option(
        "--alpha", help="What-if mode (no REPORT): acceptance rate α.")] = None,
    k_max: Annotated[int | None, typer.Option(
        "--k-max", help="Consider k = 1..K (what-if default 8; report: its k_max).")] = None,
    as_json: Json = False,
    concurrency: Annotated[list[str] | None, typer.Option(
        "--concurrency", help="Decide at these serving batch sizes (e.g. 1,4,16; each must be measured). "
        "Default: every batch size the costs were measured at (none beyond batch 1: no per-batch table).")] = None,
    costs_path: Annotated[Path | None, typer.Option(
        "--costs", help="Price with the forward times of this file (`specprof costs --out FILE`, or another "
        "report of the same target) instead of the report's own: plan for the machine that measured them.")] = None,
    engine: Annotated[str | None, typer.Option(
        "--engine", metavar="vllm", help="Add the engine's own counters (vllm).")] = None,
    k: Annotated[int | None, typer.Option(
        "--k", help="With --engine or --emit: at this k instead of each best k.")] = None,
    emit: Annotated[str | None, typer.Option(
        "--emit", metavar="vllm|sglang|vllm-synthetic|sglang-synthetic|trtllm-synthetic",
        help="Print only the config to paste.")] = None,
    per_request: Annotated[bool, typer.Option(
        "--per-request", help="With --json: add the per-request spreads and the acceptance-by-context buckets "
        "(the text output always ends with them).")] = False,
) -> None:
    from specprof.core.answers import decide
    from specprof.core.answers.analysis import load_analysis
    from specprof.core.pricing import batchcost

    check_range("--min-speedup", min_speedup, 0, lo_open=True)
    if cost_ratio is not None:
        check_range("--cost-ratio", cost_ratio, 0)
    if report_path is None:
        if alpha is None or cost_ratio is None:
            raise SpecprofError("give a REPORT, or --alpha and --cost-ratio for the what-if table")
        w = decide.what_if(alpha, cost_ratio, 8 if k_max is None else k_max)
        print_json(decide.what_if_json(w)) if as_json else stdout.print(render.what_if_view(w))
        return
    if alpha is not None:
        raise SpecprofError("--alpha is for the what-if mode; with a REPORT α is measured")
    if engine is not None and engine not in ("vllm", "transformers"):
        raise SpecprofError(f"--engine {engine}: unknown engine (use vllm, or transformers for specprof's own)")
    if emit is not None and emit not in ("vllm", "sglang", "vllm-synthetic", "sglang-synthetic", "trtllm-synthetic"):
        raise SpecprofError(f"--emit {emit}: unknown engine (use vllm, sglang, vllm-synthetic, sglang-synthetic "
                            "or trtllm-synthetic)")
    if k is not None and engine is None and emit is None:
        raise SpecprofError("--k goes with --engine or --emit (recommend picks each domain's best k)")
    requested = batchcost.parse_batch_sizes(concurrency or ())
    if cost_ratio is not None and (requested or costs_path is not None):
        raise SpecprofError(f"--cost-ratio plans one stream with a flat verification cost; "
                            f"{'--concurrency' if requested else '--costs'} prices measured times: choose one")
    if emit is not None:
        _emit(emit, report_path, draft or (), domain or (), k_max, k, cost_ratio, min_speedup, requested, costs_path)
        return
    analysis = _with_costs(load_analysis(report_path, draft or (), domain or (), k_max, policies=True), costs_path)
    _recommend(analysis, cost_ratio, domain or (), min_speedup, requested, costs_path, engine, k, as_json,
               per_request or not as_json)


def _with_costs(analysis, costs_path: Path | None):
    """The analysis priced with a costs file's forward times instead of the report's own (--costs)."""
    from specprof.core.pricing import batchcost

    if costs_path is None:
        return analysis
    return dataclasses.replace(analysis, timings=batchcost.load_costs(
        costs_path, analysis.run, [t.draft for t in analysis.traces], max(t.blocks.k_max for t in analysis.traces)))


def _recommend(analysis, cost_ratio: float | None, domains: Sequence[str], min_speedup: float,
               requested: Sequence[int], costs_path: Path | None, engine: str | None, k: int | None,
               as_json: bool, per_request: bool = False) -> None:
    """recommend on a report: estimates, plans, policies, per batch size and engine counters when asked."""
    from specprof.core.answers import decide, engineplan
    from specprof.core.pricing import batchcost, policy_estimate

    by_batch = cost_ratio is None and (bool(requested) or bool(analysis.timings and analysis.timings.by_batch_size))
    sizes = batchcost.choose_batch_sizes(analysis.timings, requested) if by_batch else ()
    estimates = decide.estimates(analysis, cost_ratio, domains, min_speedup)
    plans = decide.plans(estimates)
    policies = decide.policy_estimates(analysis, estimates, cost_ratio)
    batch_plans = batchcost.batch_plans(estimates, analysis.timings, sizes) if by_batch else []
    counters = engineplan.CounterCache(analysis, engine) if engine is not None else None
    entries = engineplan.engine_entries(analysis, estimates, engine, k, counters) if engine is not None else None
    by_request = requestview.by_request(analysis, estimates, k, counters) if per_request else None
    if as_json:
        recommendations = decide.recommendations_json(estimates, policies)
        for entry, bp in zip(recommendations, batch_plans):
            entry.update(batchcost.batch_json(bp))
        if entries is not None:
            recommendations = engineplan.engine_json(recommendations, entries, engine)
        print_json({
            "report": str(analysis.path),
            "min_speedup": min_speedup,
            "exact": analysis.exact,
            "recommendations": recommendations,
            "drafts": [decide.plan_json(p) for p in plans],
            "threshold_policy": decide.policy_grid_json(analysis),
            **({"costs": str(costs_path)} if costs_path is not None else {}),
            **({"batch_sizes": list(sizes), "batch_cost_model": batchcost.IGNORES} if by_batch else {}),
            **(requestview.by_request_json(*by_request) if by_request else {}),
        })
        return
    if entries is not None:
        from specprof.ui import engineview

        stdout.print(engineview.engine_view(estimates, entries, engine, k is not None))
        requestview.print_by_request(*by_request)
        return
    stdout.print(render.recommend_view(estimates, plans, min_speedup, policies, analysis.no_policy))
    if by_batch:
        from specprof.ui.batchview import batch_view

        stdout.print()
        stdout.print(batch_view(batch_plans, f"--costs {costs_path}" if costs_path else "the report"))
    elif costs_path is not None:
        stdout.print(f"note: costs from {costs_path}")
    if not analysis.exact:
        stdout.print("note: sampled run (T > 0): per-k figures are the chain estimate; check with verify")
        stdout.print(f"note: {policy_estimate.SAMPLED_NOTE}")
    requestview.print_by_request(*by_request)


def _emit(engine: str, report_path: Path, drafts: Sequence[str], domains: Sequence[str], k_max: int | None,
          k: int | None, cost_ratio: float | None, min_speedup: float, batch_sizes: Sequence[int],
          costs_path: Path | None) -> None:
    """recommend --emit: print only the engine's configuration (notes on stderr), so $(…) pastes it."""
    from specprof.core.answers import decide, engineplan
    from specprof.core.answers.analysis import load_analysis
    from specprof.core.pricing import batchcost

    analysis = _with_costs(load_analysis(report_path, drafts, domains, k_max), costs_path)
    estimates = decide.estimates(analysis, cost_ratio, domains, min_speedup)
    choice = engineplan.choose(analysis, estimates, decide.plans(estimates), domains, k, forced=len(drafts) == 1)
    if choice.draft is None:
        typer.echo(choice.none)
        return
    target = str((analysis.run.get("target") or {}).get("name", "TARGET"))
    if engine.endswith("-synthetic"):
        if batch_sizes:
            raise SpecprofError("--concurrency with a synthetic --emit: the acceptance does not depend on the batch")
        typer.echo(requestview.synthetic(engine, analysis, choice, domains, target))
        return
    for note in engineplan.notes(choice, target, engine):
        stderr.print(f"note: {note}")
    schedule = None
    if batch_sizes:
        if engine != "vllm":
            raise SpecprofError("--concurrency with --emit: only vLLM takes a batch-size schedule (--emit vllm)")
        # The schedule of the chosen draft on the chosen domain, or on the corpus mix (ALL).
        where = domains[0] if len(domains) == 1 else ALL
        estimate = next(e for e in estimates if e.draft == choice.draft and e.domain == where)
        sizes = batchcost.choose_batch_sizes(analysis.timings, batch_sizes)
        schedule = batchcost.vllm_schedule(batchcost.batch_plans([estimate], analysis.timings, sizes)[0].points)
    typer.echo(engineplan.vllm_config(choice, target, schedule) if engine == "vllm"
               else engineplan.sglang_flags(choice, target))


@command(help=GATE_HELP)
def gate(
    report_path: Report,
    min_speedup: Annotated[float | None, typer.Option(
        "--min-speedup", help="Fail below this speedup (lower bound).")] = None,
    min_alpha: Annotated[float | None, typer.Option("--min-alpha", help="Fail below this α (lower bound).")] = None,
    domain: Annotated[list[str] | None, typer.Option(
        "--domain", help="Check this domain (repeatable). Default: all and ALL.")] = None,
    draft: Annotated[list[str] | None, typer.Option(
        "--draft", help="Check this draft (repeatable). Default: all.")] = None,
    k: Annotated[int | None, typer.Option("--k", help="Check at this k. Default: each domain's best k.")] = None,
    point: Annotated[bool, typer.Option(
        "--point", help="Check point estimates instead of lower 95% bounds.")] = False,
    baseline: Annotated[Path | None, typer.Option(
        "--baseline", help="An older report to compare α with.")] = None,
    max_alpha_drop: Annotated[float | None, typer.Option(
        "--max-alpha-drop", help="Fail when α fell by more than X.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Compare with a baseline of another target/settings.")] = False,
    as_json: Json = False,
) -> int:
    from specprof.core.answers import decide
    from specprof.core.answers.analysis import load_analysis

    analysis = load_analysis(report_path, draft or (), domain or ())
    old = load_analysis(baseline) if baseline is not None else None
    checks = decide.gate(analysis, min_speedup, min_alpha, domain or (), k, point, old, max_alpha_drop, force)
    passed = all(c.passed for c in checks)
    if as_json:
        print_json({"passed": passed, "checks": [decide.check_json(c) for c in checks]})
    else:
        stdout.print(render.gate_view(checks))
    return 0 if passed else 1


@command(help=COMPARE_HELP)
def compare(
    report_a: Annotated[Path, typer.Argument(metavar="REPORT_A", help="The old report (A).")],
    report_b: Annotated[Path, typer.Argument(metavar="REPORT_B", help="The new report (B).")],
    force: Annotated[bool, typer.Option(
        "--force", help="Compare reports of different targets or sampling settings.")] = False,
    as_json: Json = False,
) -> None:
    from specprof.core.answers.analysis import load_analysis
    from specprof.core.answers.compare import compare as compare_reports
    from specprof.core.answers.compare import comparison_json

    a, b = load_analysis(report_a), load_analysis(report_b)
    comparisons = compare_reports(a, b, force)
    if as_json:
        print_json({"a": str(a.path), "b": str(b.path),
                    "comparisons": [comparison_json(c) for c in comparisons]})
    else:
        stdout.print(render.compare_view(comparisons, str(report_a), str(report_b)))


@command("inspect", help=INSPECT_HELP)
def inspect_command(
    report_path: Report,
    draft: Annotated[str | None, typer.Option(
        "--draft", help="The draft to inspect. Default: the report's first.")] = None,
    domain: Annotated[str | None, typer.Option("--domain", help="Rank the prompts of this domain only.")] = None,
    worst: Annotated[int, typer.Option("--worst", help="Show the N prompts with the lowest α.")] = 5,
    prompt: Annotated[str | None, typer.Option("--prompt", help="Show this prompt id in full instead.")] = None,
    k: Annotated[int | None, typer.Option(
        "--k", help="Draft length for blocks and tokens/iter. Default: the best k.")] = None,
    tokenizer: Tokenizer = None,
    export: Annotated[Path | None, typer.Option(
        "--export", help="Write the shown prompts to this .jsonl corpus.")] = None,
    as_json: Json = False,
) -> None:
    from specprof.core.answers import inspection
    from specprof.engines.hf.detokenize import auto_detokenizer

    result = inspection.inspect_report(report_path, None, draft, domain, worst, prompt, k, tokenizer, auto_detokenizer)
    exported = inspection.write_corpus(export, result.shown) if export is not None else None
    if as_json:
        print_json(inspection.inspection_json(result, exported))
    else:
        stdout.print(inspectview.inspect_view(result, exported))


@command(help=REPORT_HELP)
def report(
    report_path: Report,
    html: Annotated[Path, typer.Option("--html", help="Write the page to this file.")],
    png: Annotated[Path | None, typer.Option(
        "--png", help="Also write each plot as a PNG into this directory.")] = None,
    tokenizer: Tokenizer = None,
) -> None:
    from specprof.ui import htmlreport

    written = htmlreport.write(report_path, html, png, tokenizer)
    stdout.print(f"wrote {html}" + (f" and {len(written)} PNG files to {png}/" if png is not None else ""))
