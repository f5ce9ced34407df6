"""The read-only commands: recommend, gate, compare, inspect, report.

They read a report (tokens.parquet and run.json), never model weights, and never import torch: CI jobs
run them with nothing heavy installed. Each parses its flags, calls `core.decide` (or `inspection`,
`htmlreport`), and renders what it returns; `gate` returns exit code 1 when a check fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from specprof.core import glossary
from specprof.core.vocabulary import EMIT_TARGETS, engine_named
from specprof.errors import SpecprofError
from specprof.ui import inspectview, render
from specprof.ui.app import check_range, command, print_json, stderr, stdout
from specprof.ui.options import DomainFilter, DraftFilter, Json, Report, Tokenizer

if TYPE_CHECKING:  # the core loads inside the commands: `specprof --help` starts without numpy
    from specprof.core.answers.recommend import Emission, Recommendation

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
        "--emit", metavar="vllm|sglang", help="Print only the config to paste.")] = None,
) -> None:
    from specprof.core.answers import decide
    from specprof.core.answers import recommend as answers

    check_range("--min-speedup", min_speedup, 0, lo_open=True)
    if cost_ratio is not None:
        check_range("--cost-ratio", cost_ratio, 0)
    if report_path is None:
        if alpha is None or cost_ratio is None:
            raise SpecprofError("give a REPORT, or --alpha and --cost-ratio for the what-if table")
        w = decide.what_if(alpha, cost_ratio, 8 if k_max is None else k_max)
        print_json(w.to_json()) if as_json else stdout.print(render.what_if_view(w))
        return
    if alpha is not None:
        raise SpecprofError("--alpha is for the what-if mode; with a REPORT α is measured")
    if engine is not None and engine_named(engine) is None:
        raise SpecprofError(f"--engine {engine}: unknown engine (use vllm, or transformers for specprof's own)")
    engine = engine_named(engine) if engine is not None else None  # hf is transformers
    if emit is not None and emit not in EMIT_TARGETS:
        raise SpecprofError(f"--emit {emit}: unknown engine (use vllm or sglang)")
    if k is not None and engine is None and emit is None:
        raise SpecprofError("--k goes with --engine or --emit (recommend picks each domain's best k)")
    pricing = {"cost_ratio": cost_ratio, "min_speedup": min_speedup, "draft": draft or (), "domain": domain or (),
               "k_max": k_max, "k": k, "concurrency": concurrency or (), "costs": costs_path}
    if emit is not None:
        _show_emission(answers.emit(report_path, emit, **pricing))
        return
    result = answers.recommend(report_path, engine=engine, **pricing)
    print_json(result.to_json()) if as_json else _show_recommendation(result)


def _show_recommendation(result: Recommendation) -> None:
    """recommend's tables: the engine's counters (--engine), or the decisions, plans and batch sizes."""
    from specprof.core.pricing import policy_estimate

    if result.engine is not None:
        from specprof.ui import engineview

        entries = [(e.engine.k, e.engine.counters) for e in result.entries if e.engine is not None]
        stdout.print(engineview.engine_view(result.estimates, entries, result.engine, result.engine_k is not None))
        return
    stdout.print(render.recommend_view(result.estimates, list(result.plans), result.min_speedup, result.policies,
                                       result.no_policy))
    if result.batch_sizes is not None:
        from specprof.ui.batchview import batch_view

        stdout.print()
        stdout.print(batch_view(result.batch_plans, f"--costs {result.costs}" if result.costs else "the report"))
    elif result.costs is not None:
        stdout.print(f"note: costs from {result.costs}")
    if not result.exact:
        stdout.print("note: sampled run (T > 0): per-k figures are the chain estimate; check with verify")
        stdout.print(f"note: {policy_estimate.SAMPLED_NOTE}")


def _show_emission(emission: Emission) -> None:
    """recommend --emit: only the engine's configuration on stdout (notes on stderr), so $(…) pastes it."""
    for note in emission.notes:
        stderr.print(f"note: {note}")
    typer.echo(emission.text)


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

    result = decide.gate_report(report_path, min_speedup=min_speedup, min_alpha=min_alpha, domain=domain or (),
                                draft=draft or (), k=k, point=point, baseline=baseline,
                                max_alpha_drop=max_alpha_drop, force=force)
    print_json(result.to_json()) if as_json else stdout.print(render.gate_view(list(result.checks)))
    return 0 if result.passed else 1


@command(help=COMPARE_HELP)
def compare(
    report_a: Annotated[Path, typer.Argument(metavar="REPORT_A", help="The old report (A).")],
    report_b: Annotated[Path, typer.Argument(metavar="REPORT_B", help="The new report (B).")],
    force: Annotated[bool, typer.Option(
        "--force", help="Compare reports of different targets or sampling settings.")] = False,
    as_json: Json = False,
) -> None:
    from specprof.core.answers.compare import compare_reports

    result = compare_reports(report_a, report_b, force)
    if as_json:
        print_json(result.to_json())
    else:
        stdout.print(render.compare_view(list(result.comparisons), str(report_a), str(report_b)))


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
    from specprof.engines.text import auto_detokenizer

    result = inspection.inspect(report_path, draft=draft, domain=domain, worst=worst, prompt=prompt, k=k,
                                tokenizer=tokenizer, export=export, fallback=auto_detokenizer)
    if as_json:
        print_json(result.to_json())
    else:
        stdout.print(inspectview.inspect_view(result, result.exported))


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
