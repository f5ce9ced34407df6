"""The `specprof` command line: parse, call one function, render.

Every command runs through `_run`, the one place where `SpecprofError` becomes a single line on
stderr and exit code 2 (`--debug` shows the traceback instead). Heavy modules (torch,
transformers) are imported inside the commands that need them, so `recommend`, `gate` and
`compare` start fast.
"""

from __future__ import annotations

import dataclasses
import os
import sys

# Before numpy loads, and only for the decision commands (torch may use OpenBLAS in `profile`):
# OpenBLAS's thread pool costs more than it saves on the bootstrap's small products (1000
# resamples × a few hundred prompts) and oversubscribes shared CI runners; one thread made the
# bootstrap of a million-row report 2.5× faster on 2 busy cores. An explicit setting wins.
if {"recommend", "gate", "compare", "inspect", "report"} & set(sys.argv[1:3]):
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from specprof import __version__
from specprof.core import glossary
from specprof.errors import SpecprofError
from specprof.ui import render
from specprof.ui.helpstyle import App

try:
    from typer._click import exceptions as click_errors  # recent typer carries its own copy of click
except ImportError:  # older typer runs on click itself
    from click import exceptions as click_errors

HELP = (
    "Profile speculative-decoding acceptance per domain and draft length before turning speculation on.\n\n"
    "Names as in vLLM (tokens/iter is the mean acceptance length, bonus token included); every figure is "
    "defined in specprof recommend --help."
)

app = App(help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _console(**kwargs: Any) -> Console:
    """A Rich console. Piped or redirected output has no terminal width, and Rich would cut tables
    to 80 columns; give it 160 there (COLUMNS still wins)."""
    console = Console(soft_wrap=True, emoji=False, **kwargs)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160
    return console


stdout = _console()
stderr = _console(stderr=True)
STATE = {"debug": bool(os.environ.get("SPECPROF_DEBUG"))}


def _run(fn: Callable[[], Any]) -> Any:
    """Call `fn`; turn our own errors into one line and exit 2. Anything else is a bug: traceback."""
    try:
        return fn()
    except SpecprofError as e:
        if STATE["debug"]:
            raise
        render.print_error(stderr, str(e))
        raise typer.Exit(code=2) from None


def _version(value: bool) -> None:
    if value:
        stdout.print(f"specprof {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    STATE["debug"] = debug


def _quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def check_range(flag: str, value: float, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False) -> None:
    if value != value:  # NaN
        raise SpecprofError(f"{flag} {value}: must be a number")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise SpecprofError(f"{flag} {value}: must be {'>' if lo_open else '≥'} {lo}")
    if hi is not None and value > hi:
        raise SpecprofError(f"{flag} {value}: must be ≤ {hi}")




CONCURRENCY_HELP = (
    "Also time the cost model at these serving batch sizes (comma-separated or repeated, e.g. 1,4,16): "
    "t_T(n; b), t_D(b) and the catch-up for b sequences at once, stored in run.json; recommend then decides "
    "per batch size. Default: batch 1 only (one stream)."
)


@app.command()
def profile(
    prompts: Path = typer.Argument(..., help="Prompt corpus: .jsonl, .csv, .parquet, .txt, or a directory of them."),
    target: str = typer.Option(
        None, "--target", help="Target model: HF id, local directory or .gguf. Default: embedded SmolLM2-135M-Instruct."
    ),
    draft: list[str] = typer.Option(
        None,
        "--draft",
        help="Draft (repeatable): a model (id, directory, .gguf), early-exit:L (the target's first L layers), "
        "vllm-ngram[:MIN:MAX] (vLLM's n-gram proposer, default 5:5), prompt-lookup[:M] (transformers' prompt "
        "lookup) or ngram[:N] (specprof's lookup). Default: vllm-ngram and an early exit at 87% of the target's "
        "depth (early-exit:26 of SmolLM2's 30 layers), the drafts an engine can run.",
    ),
    k_max: int = typer.Option(8, "--k-max", help="Profile every draft length k = 1..K."),
    max_new_tokens: int = typer.Option(
        128, "--max-new-tokens", help="Target tokens generated per prompt (logged responses: at most this many used)."
    ),
    temperature: float = typer.Option(0.0, "--temperature", help="0: greedy, exact. >0: sampled, estimated."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (with --temperature > 0)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed (per prompt, independent of batching)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Prompts per batch. Default: 32 on CPU, 64 on CUDA."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda, cuda:N."),
    dtype: str = typer.Option(
        "auto", "--dtype", help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16."
    ),
    out: Path = typer.Option(Path("specprof-report"), "--out", help="Report directory."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report in --out."),
    resume: bool = typer.Option(
        False, "--resume", help="Finish an interrupted run in --out (same options); completed prompts are kept."
    ),
    too_long: str = typer.Option(
        "skip", "--too-long", help="Prompts that do not fit the context with --max-new-tokens: skip (warn) or error."
    ),
    limit: int = typer.Option(
        None,
        "--limit",
        help="Only the first N prompts of each domain (default: all). The bundled run of sample_prompts/ "
        "(156 prompts, 128 new tokens each) takes about 3 minutes on 2 CPU cores, well under 10.",
    ),
    domain: list[str] = typer.Option(None, "--domain", help="Only these domains (repeatable)."),
    no_chat_template: bool = typer.Option(False, "--no-chat-template", help="Feed prompts as plain text."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model repos' own code."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickle (.bin/.pt) checkpoints."),
    responses: str = typer.Option(
        None, "--responses",
        help="logged: no generation; one teacher-forced target pass over each prompt + its logged response "
        "(default when every record has a response). At --temperature 0 the response is used up to its first "
        "disagreement with the target's greedy choice (the agreement is reported; almost none: refused). At T > 0 "
        "the logged tokens are assumed to be samples of this target at the served --temperature and --top-p, and "
        "acceptance along them is Σ min(p, q). generate: ignore logged responses and generate.",
    ),
    domain_field: str = typer.Option(
        None, "--domain-field", help="The record field holding the domain, a dotted path (metadata.route). "
        "Default: \"domain\", else default.",
    ),
    shard: str = typer.Option(
        None, "--shard", help="i/n: profile only shard i of n (prompts split by a hash of their id); "
        "combine the n reports with specprof merge.",
    ),
    concurrency: list[str] = typer.Option(None, "--concurrency", help=CONCURRENCY_HELP),
) -> None:
    """Measure token-level acceptance of each draft against the target, per domain, for every k.

    One greedy target generation per prompt plus one teacher-forced pass per draft gives the exact
    speculative trace for every k = 1..K at once (at --temperature 0). Writes tokens.parquet,
    summary.parquet, blocks.parquet, prompts.parquet and run.json to --out. PROMPTS may be a traffic log
    with the served responses (chat completions, ShareGPT, OpenAI batch input + output files): see --responses.
    """

    def go() -> None:
        from specprof.core.batchcost import parse_batch_sizes

        batch_sizes = parse_batch_sizes(concurrency or ())
        check_range("--k-max", k_max, 1, 64)
        check_range("--max-new-tokens", max_new_tokens, 1)
        check_range("--temperature", temperature, 0)
        check_range("--top-p", top_p, 0, 1, lo_open=True)
        if batch_size is not None:
            check_range("--batch-size", batch_size, 1)
        if limit is not None:
            check_range("--limit", limit, 1)
        if too_long not in ("skip", "error"):
            raise SpecprofError(f"--too-long {too_long}: use skip or error")
        if resume and overwrite:
            raise SpecprofError("--resume and --overwrite: choose one")
        import time

        from specprof.core import logs, shards
        from specprof.core.corpus import load_corpus

        notes: list[str] = []
        corpus = load_corpus(prompts, domain or (), limit, domain_field, notes)
        corpus, mode = logs.choose_responses(corpus, responses)
        shard_info = None
        if shard is not None:
            corpus, shard_info = shards.take_shard(corpus, *shards.parse_shard(shard))
        for note in notes:
            _notice(note)
        loading_started = time.perf_counter()
        _quiet_transformers()
        from specprof.core.store import RunStore
        from specprof.engines.hf import drafts, models, profiler

        dev = models.resolve_device(device)
        dt = models.resolve_dtype(dtype, dev)
        settings = profiler.Settings(
            k_max=k_max,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            batch_size=batch_size or (64 if dev.type == "cuda" else 32),
            chat_template=not no_chat_template,
            responses=mode,
        )
        specs = list(draft or [])
        if len(set(specs)) != len(specs):
            raise SpecprofError(f"--draft {next(s for s in specs if specs.count(s) > 1)}: given twice")
        exits = [(s, value) for s in specs for kind, value in [drafts.parse_kind(s)] if kind == "early-exit"]
        target_layers = models.config_num_layers(target, trust_remote_code) if exits else None
        if target_layers is not None:  # a bad --draft fails before any weights load
            for spec, value in exits:
                drafts.check_early_exit(spec, value, target_layers)
        with stderr.status("loading models…"):
            tgt = models.load_model(target, dev, dt, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
            specs = specs or drafts.default_specs(tgt.num_layers)
            loaded = [
                drafts.load_draft(s, tgt, dev, dt, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
                for s in specs
            ]
        # bad prompts fail before any write; an empty shard has none
        prepared = profiler.prepare(corpus, tgt, loaded, settings, too_long) if corpus else ([], [])
        run_info = profiler.describe_run(tgt, loaded, settings, corpus, str(prompts), domain or [], limit, dev, dt)
        if shard_info is not None:
            run_info["shard"] = shard_info
        store = RunStore.resume(out, run_info) if resume else RunStore.create(out, run_info, overwrite=overwrite)
        profiler.add_phases(store, {"loading": time.perf_counter() - loading_started})
        try:
            if store.finished:
                stdout.print(f"the run in {out}/ already finished; nothing to resume")
                return
            if not corpus:
                shards.finish_empty(store)
                stdout.print(f"shard {shard}: no prompt of the corpus falls in it; an empty report is written to "
                             f"{out}/ for specprof merge")
                return
            with _interruptible(), _progress_bar(len(prepared[0])) as update:
                result = profiler.run_profile(
                    corpus, tgt, loaded, settings, store, progress=update, notice=_notice, prepared=prepared,
                    batch_sizes=batch_sizes or (1,),
                )
        except KeyboardInterrupt:
            saved = len(store.run["completed_prompts"])
            stderr.print(
                f"interrupted: {saved} of {len(corpus)} prompts are saved in {out}/; resume with:\n"
                f"  {_resume_command(prompts, out)}",
                markup=False,
                highlight=False,
            )
            raise typer.Exit(code=130) from None
        finally:
            store.close()
        for d in dict.fromkeys(result.summary["draft"]):
            stdout.print(render.profile_table(result.summary, d))
        from specprof.core.costmodel import timing_warning

        # The same check recommend makes: say it now, while the user can still re-run on an idle machine.
        if (warning := timing_warning(result.run["timings"]["target_forward_s"])) is not None:
            stdout.print(f"warning: {warning}", markup=False, highlight=False)
        if result.run.get("logged_responses"):
            rows = result.run["logged_responses"]["prompts"]
            for line in (logs.describe_agreement(logs.pool_agreement(rows), temperature == 0),
                         logs.describe_domains(rows, temperature == 0)):
                if line:
                    stdout.print(line, markup=False, highlight=False)
        stdout.print(f"report written to {out}/ (recommend with: specprof recommend {out})")

    _run(go)


@app.command()
def merge(
    reports: list[Path] = typer.Argument(..., metavar="REPORT...", help="The shard reports of one run."),
    out: Path = typer.Option(..., "--out", help="Directory for the merged report."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report in --out."),
) -> None:
    """Merge the reports of `profile --shard i/n` (all n shards of one run) into the unsharded report.

    Shards of different runs (models, settings, corpus, versions) are refused, naming the difference.
    Tokens and prompts are concatenated in the unsharded run's order and the summary and blocks recomputed,
    so the report equals the unsharded one; costs are priced with the mean of the shards' measured timings
    (each shard's are kept in run.json's merged_from).
    """

    def go() -> None:
        from specprof.core import shards

        run = shards.merge_reports(reports, out, overwrite)
        stdout.print(f"merged {len(run['merged_from'])} shards ({run['corpus']['n_prompts']} prompts) into {out}/ "
                     f"(recommend with: specprof recommend {out})")

    _run(go)


COSTS_HELP = "\n\n".join([
    "Measure the cost model's forward times on this machine for a target and its drafts, without a corpus run.",
    "At each serving batch size b (--concurrency; default 1,2,4 on a CPU, 1,4,16,64 on CUDA): t_T(n; b), the "
    "target verifying n = 1..K+1 tokens for each of b sequences in one pass; t_D(b), one draft step for all b; and "
    "the draft's catch-up step. Each is the mean of 12 repeats after 2 warm-ups (fastest and slowest dropped), "
    "every n of one batch size measured round-robin, with a KV cache of --context-tokens tokens per sequence "
    "(or the median prompt of --prompts plus 64).",
    "Writes costs.json (--out FILE.json or a directory): the models, device, dtype and the same timings a report "
    "holds in run.json. Price a report with them: specprof recommend REPORT --costs costs.json.",
])


@app.command(help=COSTS_HELP)
def costs(
    target: str = typer.Option(
        None, "--target", help="Target model: HF id, local directory or .gguf. Default: embedded SmolLM2-135M-Instruct."
    ),
    draft: list[str] = typer.Option(
        None, "--draft", help="Draft (repeatable), as in profile. Default: ngram and the default early exit."
    ),
    k_max: int = typer.Option(8, "--k-max", help="Time verification of n = 1..K+1 tokens (draft lengths 1..K)."),
    concurrency: list[str] = typer.Option(
        None, "--concurrency", help="Serving batch sizes (comma-separated or repeated). Default: 1,2,4 on a CPU, "
        "1,4,16,64 on CUDA. Batch 1 is always measured."
    ),
    context_tokens: int = typer.Option(
        None, "--context-tokens", help="Tokens in each sequence's KV cache. Default: from --prompts, else 256."
    ),
    prompts: Path = typer.Option(
        None, "--prompts", help="A prompt corpus to take the typical context length (and its tokens) from."
    ),
    no_chat_template: bool = typer.Option(False, "--no-chat-template", help="With --prompts: feed them as plain text."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda, cuda:N."),
    dtype: str = typer.Option(
        "auto", "--dtype", help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16."
    ),
    out: Path = typer.Option(Path("costs.json"), "--out", help="A .json file, or a directory to hold costs.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing costs file."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model repos' own code."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickle (.bin/.pt) checkpoints."),
    as_json: bool = typer.Option(False, "--json", help="Print the written record as JSON."),
) -> None:
    def go() -> None:
        from specprof.core.batchcost import parse_batch_sizes

        check_range("--k-max", k_max, 1, 64)
        if context_tokens is not None:
            check_range("--context-tokens", context_tokens, 1)
        batch_sizes = parse_batch_sizes(concurrency or ())
        corpus = []
        if prompts is not None:
            from specprof.core.corpus import load_corpus

            corpus = load_corpus(prompts, (), None)
        _quiet_transformers()
        from specprof.commands import costs as costs_mod
        from specprof.engines.hf import drafts, models, timings

        path = costs_mod.out_path(out)
        if path.exists() and not overwrite:
            raise SpecprofError(f"--out {path}: exists (pass --overwrite to replace it)")
        specs = list(draft or [])
        if len(set(specs)) != len(specs):
            raise SpecprofError(f"--draft {next(s for s in specs if specs.count(s) > 1)}: given twice")
        for spec in specs:
            drafts.parse_kind(spec)
        dev = models.resolve_device(device)
        dt = models.resolve_dtype(dtype, dev)
        with stderr.status("loading models…"):
            tgt = models.load_model(target, dev, dt, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
            specs = specs or drafts.default_specs(tgt.num_layers)
            loaded = [
                drafts.load_draft(s, tgt, dev, dt, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
                for s in specs
            ]
        context = costs_mod.timing_context(tgt, context_tokens, corpus, not no_chat_template, k_max)
        sizes = batch_sizes or timings.default_batch_sizes(dev)
        with stderr.status(f"timing batch sizes {', '.join(map(str, sizes))}…"):
            record, measured = costs_mod.measure_costs(tgt, loaded, context, k_max, sizes, dev, dt)
        costs_mod.write_costs(path, record)
        if as_json:
            _print_json(record)
        else:
            from specprof.ui.batchview import costs_table

            stdout.print(costs_table(measured))
            stdout.print(f"device {record['device']}, dtype {record['dtype']}; costs written to {path} "
                         f"(price a report with: specprof recommend REPORT --costs {path})")

    _run(go)


def _notice(message: str) -> None:
    stderr.print(f"specprof: {message}", markup=False, highlight=False)


def _resume_command(prompts: Path, out: Path) -> str:
    """The command line that resumes this run: the user's own arguments plus --resume."""
    import shlex

    argv = STATE.get("argv")
    if argv is None:  # called as a library (tests): name the essentials
        argv = ["profile", str(prompts), "--out", str(out), "..."]
    args = [a for a in argv if a not in ("--overwrite", "--resume")]
    return shlex.join(["specprof", *args, "--resume"])


class _interruptible:
    """Turn SIGTERM into KeyboardInterrupt for the duration, so both stop cleanly after the last saved batch."""

    def __enter__(self) -> None:
        import signal

        def stop(signum, frame):
            raise KeyboardInterrupt

        try:
            self.previous = signal.signal(signal.SIGTERM, stop)
        except ValueError:  # not the main thread
            self.previous = None

    def __exit__(self, *exc: Any) -> None:
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
def _print_json(obj: Any) -> None:
    import json

    typer.echo(json.dumps(obj, indent=2, allow_nan=False, ensure_ascii=False))


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


@app.command(help=RECOMMEND_HELP)
def recommend(
    report_path: Path = typer.Argument(
        None, metavar="REPORT", help="Report directory (or its tokens.parquet/summary.parquet). Omit for what-if."
    ),
    cost_ratio: float = typer.Option(
        None, "--cost-ratio", help="Plan for other hardware: c = draft step / target step, verification as one step."
    ),
    min_speedup: float = typer.Option(1.1, "--min-speedup", help="GO threshold on the speedup's lower bound."),
    draft: list[str] = typer.Option(None, "--draft", help="Only this draft (repeatable)."),
    domain: list[str] = typer.Option(None, "--domain", help="Only this domain (repeatable; ALL for the corpus)."),
    alpha: float = typer.Option(None, "--alpha", help="What-if mode (no REPORT): acceptance rate α."),
    k_max: int = typer.Option(None, "--k-max", help="Consider k = 1..K (what-if default 8; report: its k_max)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    concurrency: list[str] = typer.Option(
        None, "--concurrency", help="Decide at these serving batch sizes (e.g. 1,4,16; each must be measured). "
        "Default: every batch size the costs were measured at (none beyond batch 1: no per-batch table)."
    ),
    costs_path: Path = typer.Option(
        None, "--costs", help="Price with the forward times of this file (`specprof costs --out FILE`, or another "
        "report of the same target) instead of the report's own: plan for the machine that measured them."
    ),
    engine: str = typer.Option(None, "--engine", metavar="vllm", help="Add the engine's own counters (vllm)."),
    k: int = typer.Option(None, "--k", help="With --engine or --emit: at this k instead of each best k."),
    emit: str = typer.Option(None, "--emit", metavar="vllm|sglang", help="Print only the config to paste."),
) -> None:
    def go() -> None:
        from specprof.core import batchcost, decide, policy_estimate

        check_range("--min-speedup", min_speedup, 0, lo_open=True)
        if cost_ratio is not None:
            check_range("--cost-ratio", cost_ratio, 0)
        if report_path is None:
            if alpha is None or cost_ratio is None:
                raise SpecprofError("give a REPORT, or --alpha and --cost-ratio for the what-if table")
            w = decide.what_if(alpha, cost_ratio, 8 if k_max is None else k_max)
            _print_json(decide.what_if_json(w)) if as_json else stdout.print(render.what_if_view(w))
            return
        if alpha is not None:
            raise SpecprofError("--alpha is for the what-if mode; with a REPORT α is measured")
        if engine is not None and engine not in ("vllm", "transformers"):
            raise SpecprofError(f"--engine {engine}: unknown engine (use vllm, or transformers for specprof's own)")
        if emit is not None and emit not in ("vllm", "sglang"):
            raise SpecprofError(f"--emit {emit}: unknown engine (use vllm or sglang)")
        if k is not None and engine is None and emit is None:
            raise SpecprofError("--k goes with --engine or --emit (recommend picks each domain's best k)")
        requested = batchcost.parse_batch_sizes(concurrency or ())
        if cost_ratio is not None and (requested or costs_path is not None):
            raise SpecprofError(f"--cost-ratio plans one stream with a flat verification cost; "
                                f"{'--concurrency' if requested else '--costs'} prices measured times: choose one")
        if emit is not None:
            _emit(emit, report_path, draft or (), domain or (), k_max, k, cost_ratio, min_speedup, requested,
                  costs_path)
            return
        analysis = decide.load(report_path, draft or (), domain or (), k_max, policies=True)
        if costs_path is not None:
            analysis = dataclasses.replace(analysis, timings=batchcost.load_costs(
                costs_path, analysis.run, [t.draft for t in analysis.traces],
                max(t.blocks.k_max for t in analysis.traces)))
        by_batch = cost_ratio is None and (bool(requested) or bool(analysis.timings and analysis.timings.by_batch_size))
        sizes = batchcost.choose_batch_sizes(analysis.timings, requested) if by_batch else ()
        estimates = decide.estimates(analysis, cost_ratio, domain or (), min_speedup)
        plans = decide.plans(estimates)
        policies = decide.policy_estimates(analysis, estimates, cost_ratio)
        batch_plans = batchcost.batch_plans(estimates, analysis.timings, sizes) if by_batch else []
        entries = None
        if engine is not None:
            from specprof.core import engineplan

            entries = engineplan.engine_entries(analysis, estimates, engine, k)
        if as_json:
            recommendations = decide.recommendations_json(estimates, policies)
            for entry, bp in zip(recommendations, batch_plans):
                entry.update(batchcost.batch_json(bp))
            if entries is not None:
                recommendations = engineplan.engine_json(recommendations, entries, engine)
            _print_json({
                "report": str(analysis.path),
                "min_speedup": min_speedup,
                "exact": analysis.exact,
                "recommendations": recommendations,
                "drafts": [decide.plan_json(p) for p in plans],
                "threshold_policy": decide.policy_grid_json(analysis),
                **({"costs": str(costs_path)} if costs_path is not None else {}),
                **({"batch_sizes": list(sizes), "batch_cost_model": batchcost.IGNORES} if by_batch else {}),
            })
        elif entries is not None:
            from specprof.ui import engineview

            stdout.print(engineview.engine_view(estimates, entries, engine, k is not None))
        else:
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

    _run(go)


def _emit(engine: str, report_path: Path, drafts: Sequence[str], domains: Sequence[str], k_max: int | None,
          k: int | None, cost_ratio: float | None, min_speedup: float, batch_sizes: Sequence[int],
          costs_path: Path | None) -> None:
    """recommend --emit: print only the engine's configuration (notes on stderr), so $(…) pastes it."""
    from specprof.core import batchcost, decide, engineplan
    from specprof.core.estimate import ALL

    analysis = decide.load(report_path, drafts, domains, k_max)
    if costs_path is not None:
        analysis = dataclasses.replace(analysis, timings=batchcost.load_costs(
            costs_path, analysis.run, [t.draft for t in analysis.traces], max(t.blocks.k_max for t in analysis.traces)))
    estimates = decide.estimates(analysis, cost_ratio, domains, min_speedup)
    choice = engineplan.choose(analysis, estimates, decide.plans(estimates), domains, k, forced=len(drafts) == 1)
    if choice.draft is None:
        typer.echo(choice.none)
        return
    target = str((analysis.run.get("target") or {}).get("name", "TARGET"))
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


@app.command(help=GATE_HELP)
def gate(
    report_path: Path = typer.Argument(..., metavar="REPORT", help="Report directory or a file in it."),
    min_speedup: float = typer.Option(None, "--min-speedup", help="Fail below this speedup (lower bound)."),
    min_alpha: float = typer.Option(None, "--min-alpha", help="Fail below this α (lower bound)."),
    domain: list[str] = typer.Option(None, "--domain", help="Check this domain (repeatable). Default: all and ALL."),
    draft: list[str] = typer.Option(None, "--draft", help="Check this draft (repeatable). Default: all."),
    k: int = typer.Option(None, "--k", help="Check at this k. Default: each domain's best k."),
    point: bool = typer.Option(False, "--point", help="Check point estimates instead of lower 95% bounds."),
    baseline: Path = typer.Option(None, "--baseline", help="An older report to compare α with."),
    max_alpha_drop: float = typer.Option(None, "--max-alpha-drop", help="Fail when α fell by more than X."),
    force: bool = typer.Option(False, "--force", help="Compare with a baseline of another target/settings."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    def go() -> int:
        from specprof.core import decide

        analysis = decide.load(report_path, draft or (), domain or ())
        old = decide.load(baseline) if baseline is not None else None
        checks = decide.gate(analysis, min_speedup, min_alpha, domain or (), k, point, old, max_alpha_drop, force)
        passed = all(c.passed for c in checks)
        if as_json:
            _print_json({"passed": passed, "checks": [decide.check_json(c) for c in checks]})
        else:
            stdout.print(render.gate_view(checks))
        return 0 if passed else 1

    code = _run(go)
    if code:
        raise typer.Exit(code=code)


@app.command(help=COMPARE_HELP)
def compare(
    report_a: Path = typer.Argument(..., metavar="REPORT_A", help="The old report (A)."),
    report_b: Path = typer.Argument(..., metavar="REPORT_B", help="The new report (B)."),
    force: bool = typer.Option(False, "--force", help="Compare reports of different targets or sampling settings."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    def go() -> None:
        from specprof.core import decide

        a, b = decide.load(report_a), decide.load(report_b)
        comparisons = decide.compare(a, b, force)
        if as_json:
            _print_json({"a": str(a.path), "b": str(b.path),
                         "comparisons": [decide.comparison_json(c) for c in comparisons]})
        else:
            stdout.print(render.compare_view(comparisons, str(report_a), str(report_b)))

    _run(go)


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


@app.command("inspect", help=INSPECT_HELP)
def inspect_command(
    report_path: Path = typer.Argument(..., metavar="REPORT", help="Report directory or a file in it."),
    draft: str = typer.Option(None, "--draft", help="The draft to inspect. Default: the report's first."),
    domain: str = typer.Option(None, "--domain", help="Rank the prompts of this domain only."),
    worst: int = typer.Option(5, "--worst", help="Show the N prompts with the lowest α."),
    prompt: str = typer.Option(None, "--prompt", help="Show this prompt id in full instead."),
    k: int = typer.Option(None, "--k", help="Draft length for blocks and tokens/iter. Default: the best k."),
    tokenizer: str = typer.Option(None, "--tokenizer", help="Tokenizer directory or id, if not the target's."),
    export: Path = typer.Option(None, "--export", help="Write the shown prompts to this .jsonl corpus."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    def go() -> None:
        from specprof.core import inspection

        result = inspection.inspect_report(report_path, None, draft, domain, worst, prompt, k, tokenizer)
        exported = inspection.write_corpus(export, result.shown) if export is not None else None
        if as_json:
            _print_json(inspection.inspection_json(result, exported))
        else:
            stdout.print(render.inspect_view(result, exported))

    _run(go)


@app.command(help=REPORT_HELP)
def report(
    report_path: Path = typer.Argument(..., metavar="REPORT", help="Report directory or a file in it."),
    html: Path = typer.Option(..., "--html", help="Write the page to this file."),
    png: Path = typer.Option(None, "--png", help="Also write each plot as a PNG into this directory."),
    tokenizer: str = typer.Option(None, "--tokenizer", help="Tokenizer directory or id, if not the target's."),
) -> None:
    def go() -> None:
        from specprof.ui import htmlreport

        written = htmlreport.write(report_path, html, png, tokenizer)
        stdout.print(f"wrote {html}" + (f" and {len(written)} PNG files to {png}/" if png is not None else ""))

    _run(go)


@app.command()
def verify(
    report: Path = typer.Argument(..., help="A report directory written by `specprof profile`."),
    k: list[int] = typer.Option(
        None, "--k", help="Draft length (repeatable). Default: each domain's best k by predicted speedup."
    ),
    limit: int = typer.Option(None, "--limit", help="Only the first N prompts of each domain (default: all)."),
    draft: list[str] = typer.Option(None, "--draft", help="Only this draft of the report (repeatable)."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables."),
    engine: str = typer.Option("transformers", "--engine", help="transformers: run the loop here; vllm: compare "
                               "with a vLLM server's /metrics counters (--url or --launch)."),
    url: str = typer.Option(None, "--url", help="vllm: a running vLLM server started with the draft's "
                            "--speculative-config (e.g. http://127.0.0.1:8000)."),
    launch: bool = typer.Option(False, "--launch", help="vllm: start a server per k from --vllm-python, "
                                "stop it after."),
    vllm_python: str = typer.Option(None, "--vllm-python", help="vllm --launch: a Python with vLLM installed "
                                    "(e.g. .venv-vllm/bin/python)."),
    draft_model_dir: str = typer.Option(None, "--draft-model-dir", help="vllm: the model directory that serves "
                                        "the draft (early-exit:L: the target's first L layers, save_pretrained)."),
    concurrency: list[str] = typer.Option(None, "--concurrency", help="vllm: B concurrent streams for each batch "
                                          "size B (e.g. 1,4): output tokens/s with and without speculation, "
                                          "predicted vs measured speedup per B."),
    baseline_url: str = typer.Option(None, "--baseline-url", help="vllm --concurrency with --url: the same target "
                                     "served without --speculative-config."),
    costs_path: Path = typer.Option(None, "--costs", help="--concurrency: predict with the times of this file "
                                    "(specprof costs) instead of the report's."),
) -> None:
    """Run real speculative decoding on the report's prompts and check its predictions on this machine.

    With --engine vllm: send the report's prompts as token ids to a vLLM server (--url, or --launch one per k)
    and compare its spec-decode counters (/metrics) and continuations with specprof's prediction under vLLM's
    conventions; exit 1 on a difference at temperature 0.

    Times the target alone and speculative decoding after a warm-up, prefill and decode apart, and
    prints predicted vs measured tokens/iter and speedup per domain (decode phase, as the cost model
    prices it; the end-to-end speedup, prefill included, beside it). At temperature 0 the speculative
    output must equal the target's token for token and tokens/iter must equal the report's exactly;
    any difference is diagnosed (position, tokens, logit margin, float32 re-check) and exits 1.
    At temperature > 0 a measured acceptance rate outside the report's α interval is flagged.
    """

    if concurrency or baseline_url or costs_path:
        _verify_concurrency(report, engine, concurrency or (), k or (), limit, draft or (), json_out, url,
                            baseline_url, vllm_python if launch else None, draft_model_dir, costs_path)
        return
    if engine == "vllm":
        _verify_vllm(report, k or (), limit, draft or (), json_out, url, launch, vllm_python, draft_model_dir)
        return

    def go() -> Any:
        if engine != "transformers":
            raise SpecprofError(f"--engine {engine}: use transformers or vllm")
        if url or launch or vllm_python or draft_model_dir:
            raise SpecprofError("--url, --launch, --vllm-python and --draft-model-dir go with --engine vllm")
        if limit is not None:
            check_range("--limit", limit, 1)
        for value in k or ():
            check_range("--k", value, 1)
        _quiet_transformers()
        from specprof.commands import verify as verifier

        with stderr.status("loading the report and models…"):
            plan = verifier.prepare(str(report), k or (), limit, draft or ())
        with _progress_bar(plan.total_generations, "verifying", "generations") as update:
            return verifier.execute(plan, progress=update)

    result = _run(go)
    if json_out:
        import json

        typer.echo(json.dumps(result.as_dict()))
    else:
        stdout.print(render.verify_table(result.rows, result.temperature))
        for d in result.divergences:
            stdout.print(f"[red]error:[/] {render.divergence_line(d)}", highlight=False)
        for r in result.rows:
            if r.check and result.temperature > 0:
                stdout.print(f"[yellow]flag:[/] draft {r.draft}, {r.domain}, k={r.k}: {r.check}", highlight=False)
        stdout.print(f"device {result.device}, dtype {result.dtype}; "
                     + ("identical outputs" if result.temperature == 0 and result.identical_outputs else
                        "outputs differ" if result.temperature == 0 else "sampled (outputs are not compared)"))
    if result.failed:
        raise typer.Exit(code=1)


def _verify_vllm(report: Path, ks: tuple, limit: int | None, drafts: tuple, json_out: bool, url: str | None,
                 launch: bool, vllm_python: str | None, draft_model_dir: str | None) -> None:
    """verify --engine vllm: the work is in commands.verify_vllm, the tables in ui.render_vllm."""

    def go() -> Any:
        from specprof.commands import verify_vllm

        if launch != (vllm_python is not None) or (launch and url):
            raise SpecprofError("--engine vllm: pass either --url URL or --launch --vllm-python PY")
        if len(drafts) > 1:
            raise SpecprofError("--engine vllm: one --draft at a time (a server runs one speculative config)")
        options = verify_vllm.Options(drafts[0] if drafts else None, tuple(ks), limit, url, vllm_python,
                                      draft_model_dir)
        with stderr.status("verifying against vLLM…") as status:
            return verify_vllm.run(str(report), options, progress=lambda m: status.update(m))

    result = _run(go)
    from specprof.ui import render_vllm

    if json_out:
        _print_json(result.as_dict())
    else:
        sampled = result.temperature > 0
        stdout.print(render_vllm.sampled_table(result) if sampled else render_vllm.counters_table(result))
        for line in render_vllm.lines(result):
            stdout.print(line, highlight=False)
        stdout.print(render_vllm.summary_line(result), highlight=False)
    if result.error:
        render.print_error(stderr, result.error)
        raise typer.Exit(code=2)
    if result.mismatch:
        raise typer.Exit(code=1)


def _verify_concurrency(report: Path, engine: str, concurrency: Sequence[str], ks: Sequence[int], limit: int | None,
                        drafts: Sequence[str], json_out: bool, url: str | None, baseline_url: str | None,
                        vllm_python: str | None, draft_model_dir: str | None, costs_path: Path | None) -> None:
    """verify --concurrency: the work is in commands.verify_concurrency, the table in ui.render_concurrency."""
    from specprof.commands import verify_concurrency as vc

    def go() -> Any:
        from specprof.core.batchcost import parse_batch_sizes

        if engine != "vllm":
            raise SpecprofError(vc.NO_BATCHED_LOOP)
        if not concurrency:
            raise SpecprofError("--baseline-url and --costs go with --concurrency")
        if len(ks) > 1 or len(drafts) > 1:
            raise SpecprofError("verify --concurrency: one --draft and one --k at a time (a server runs one config)")
        options = vc.Options(parse_batch_sizes(concurrency), drafts[0] if drafts else None, ks[0] if ks else None,
                             limit, url, baseline_url, vllm_python, draft_model_dir,
                             str(costs_path) if costs_path else None)
        with stderr.status("verifying at concurrency against vLLM…") as status:
            return vc.run(str(report), options, progress=lambda m: status.update(m))

    result = _run(go)
    from specprof.ui import render_concurrency

    if json_out:
        _print_json(result.as_dict())
    else:
        stdout.print(render_concurrency.table(result))
        for line in render_concurrency.lines(result):
            stdout.print(line, highlight=False)
    if result.error:
        render.print_error(stderr, result.error)
        raise typer.Exit(code=2)


@app.command()
def distill(
    source: Path = typer.Argument(
        ..., help="A profile report directory (its continuations are reused) or a prompt corpus (generated first)."
    ),
    target: str = typer.Option(
        None, "--target", help="Target model: HF id, local directory or .gguf. Default: the report's target, "
        "or the embedded SmolLM2-135M-Instruct for a corpus."
    ),
    layers: int = typer.Option(..., "--layers", help="L: the draft runs the target's first L layers (frozen) "
                               "plus one trained layer (a copy of layer L), the final norm and the LM head."),
    out: Path = typer.Option(..., "--out", help="DRAFT_DIR: an ordinary transformers model directory."),
    epochs: int = typer.Option(16, "--epochs", help="Passes over the training prompts (at most)."),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate (AdamW, cosine decay). Default: per objective."),
    objective: str = typer.Option("kl", "--objective", help="kl: KL to the target's distribution; "
                                  "ce: cross-entropy on the target's tokens."),
    max_minutes: float = typer.Option(12.0, "--max-minutes", help="Wall-clock bound on the whole run "
                                      "(generation included); training stops early enough to save."),
    holdout: float = typer.Option(0.1, "--holdout", help="Fraction of prompts per domain held out for "
                                  "early stopping and the before/after table (by prompt, never by token)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the held-out split, batch order and initialisation."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Corpus only: target tokens per prompt "
                                       "(default 128, as profile)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Corpus only: prompts per generation batch."),
    no_chat_template: bool = typer.Option(False, "--no-chat-template", help="Corpus only: feed prompts as plain text."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda, cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bfloat16 on CUDA, float32 on CPU), float32, "
                              "bfloat16, float16."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing DRAFT_DIR."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model repos' own code."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickle (.bin/.pt) checkpoints."),
) -> None:
    """Train a small draft on the target's own continuations and save it as a model directory.

    The draft is the target's first L layers (frozen), one trained layer, the norm and the LM head:
    an ordinary transformers model (--draft DRAFT_DIR in profile, assistant_model in transformers,
    a draft model in serving engines). Prints held-out α per domain before (early-exit:L) and after;
    DRAFT_DIR/distill.json records it with the settings, data size and time.
    """

    def go() -> None:
        import time

        started = time.perf_counter()
        check_range("--layers", layers, 1)
        check_range("--epochs", epochs, 1)
        check_range("--max-minutes", max_minutes, 0, lo_open=True)
        if lr is not None:
            check_range("--lr", lr, 0, lo_open=True)
        if objective not in ("kl", "ce"):
            raise SpecprofError(f"--objective {objective}: use kl or ce")
        _quiet_transformers()
        from specprof.commands import distill as distill_mod
        from specprof.core import distill_eval
        from specprof.engines.hf import models
        from specprof.engines.hf.distill_data import DEFAULT_LR, DistillSettings

        if distill_mod.is_report(source):
            given = [f for f, v in [("--max-new-tokens", max_new_tokens), ("--batch-size", batch_size),
                                    ("--no-chat-template", no_chat_template or None)] if v is not None]
            if given:
                raise SpecprofError(f"{given[0]}: only for a prompt corpus; a report's continuations are reused")
        src = distill_mod.read_source(source)
        if max_new_tokens is not None:
            check_range("--max-new-tokens", max_new_tokens, 1)
        if batch_size is not None:
            check_range("--batch-size", batch_size, 1)
        settings = DistillSettings(
            layers=layers, epochs=epochs, objective=objective, holdout=holdout, seed=seed, max_minutes=max_minutes,
            **({"lr": lr} if lr is not None else {"lr": DEFAULT_LR[objective]}),
        )
        distill_eval.check_holdout(holdout)
        dev = models.resolve_device(device)
        dt = models.resolve_dtype(dtype, dev)
        with stderr.status("loading the target…"):
            tgt = models.load_model(target or src.target_spec, dev, dt, trust_remote_code=trust_remote_code,
                                    allow_pickle=allow_pickle)
        distill_mod.check_target(tgt, src, layers)
        generation = distill_mod.GenerationSettings(
            max_new_tokens=max_new_tokens or 128,
            batch_size=batch_size or (64 if dev.type == "cuda" else 32),
            chat_template=not no_chat_template,
        )
        with _distill_bar() as events:
            result = distill_mod.run_distill(src, tgt, settings, out, generation, started=started,
                                             overwrite=overwrite, events=events)
        record = result.record
        stdout.print(distill_eval.render_table(
            result.table, layers, f"held-out α per domain ({record['data']['heldout_prompts']} prompts not trained on; "
            "they also chose when to stop, so profile other prompts to measure the gain)"
        ))
        t = record["training"]
        stdout.print(
            f"{t['steps']} steps ({t['epochs']:.1f} epochs, stopped by {t['stopped_by']}) in "
            f"{record['time_s']['total_s'] / 60:.1f} min; draft written to {out}/ "
            f"(profile it with: specprof profile PROMPTS --draft early-exit:{layers} --draft {out})"
        )

    _run(go)


class _distill_bar:
    """Rich progress on stderr: generation and caching by prompts, then training with loss, held-out α, tokens/s."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), console=stderr, transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def _task(self, phase: str, total: float | None) -> Any:
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(phase, total=total, info="")
        return self.tasks[phase]

    def __enter__(self) -> Callable:
        self.progress.start()

        def events(phase: str, **f: Any) -> None:
            if phase == "generate":
                self.progress.update(self._task("generating", f["total"]), completed=f["done"],
                                     info=f"{f['tokens']} tokens")
            elif phase == "cache":
                self.progress.update(self._task("caching", f["total"]), completed=f["done"], info="frozen layers")
            elif phase == "train":
                p = f["progress"]
                self.progress.update(
                    self._task("training", p.total_steps), completed=p.step,
                    info=f"loss {p.loss:.3f}  held-out α {p.heldout_alpha:.3f}  {p.tokens_per_s:.0f} tok/s",
                )
            elif phase == "save":
                self.progress.update(self._task("saving", 1), completed=f.get("done", 0), info="")
            elif phase == "notice":
                self.progress.console.print(f"[yellow]note:[/] {f['message']}", highlight=False)

        return events

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()


class _progress_bar:
    """A Rich progress bar on stderr: prompts done, generated tokens per second, ETA."""

    def __init__(self, total: int, label: str = "profiling", unit: str = "prompts"):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(label),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=stderr,
            transient=False,
        )
        self.task = self.progress.add_task("profile", total=total, rate="")

    def __enter__(self) -> Callable:
        import time

        self.progress.start()
        start = time.perf_counter()

        def update(p: Any) -> None:
            if hasattr(p, "done"):  # verify: generations done
                self.progress.update(self.task, completed=p.done)
                return
            rate = p.tokens_done / max(time.perf_counter() - start, 1e-9)
            self.progress.update(self.task, completed=p.prompts_done, rate=f"{rate:.0f} tok/s")

        return update

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()


@app.command("export-draft")
def export_draft(
    draft: str = typer.Argument(..., metavar="DRAFT", help="The early-exit draft to save: early-exit:L."),
    out: Path = typer.Option(..., "--out", help="Model directory to write (safetensors and tokenizer)."),
    target: str = typer.Option(None, "--target", help="Target model (default: the embedded SmolLM2)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out."),
) -> None:
    """Save the target's first L layers (with its final norm and LM head) as a model directory, the
    draft model an engine needs for early-exit:L (vLLM: {"method": "draft_model", "model": DIR})."""

    def go() -> None:
        import torch

        from specprof.engines.hf import export, models

        if dtype not in ("float32", "bfloat16", "float16"):
            raise SpecprofError(f"--dtype {dtype}: use float32, bfloat16 or float16")
        loaded = models.load_model(target, torch.device("cpu"), getattr(torch, dtype))
        path = export.export_early_exit(loaded, draft, out, overwrite)
        stdout.print(f"wrote {draft} of {loaded.name} to {path}/")

    _run(go)


def main() -> None:
    """Console-script entry point: usage errors become one line and exit code 2, like our own errors."""
    STATE["argv"] = sys.argv[1:]
    try:
        code = app(standalone_mode=False)
    except click_errors.UsageError as e:
        if type(e).__name__ != "NoArgsIsHelpError":  # help was printed; nothing to add
            message = e.format_message()
            if e.ctx is not None and e.ctx.command_path:
                message = f"{message} (see: {e.ctx.command_path} --help)"
            render.print_error(stderr, message)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        stderr.print("aborted")
        sys.exit(130)
    sys.exit(code or 0)
