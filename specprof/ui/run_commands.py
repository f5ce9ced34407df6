"""The commands that run models or write reports: profile, costs, merge, export-draft, distill.

Each parses its flags, calls one function of `specprof.commands` (or the core), and renders what
it returns. Heavy modules are imported inside the commands.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from specprof.core.vocabulary import EARLY_EXIT, TRANSFORMERS, VLLM, engine_named
from specprof.errors import SpecprofError
from specprof.ui import render
from specprof.ui.app import (
    STATE,
    check_once,
    check_range,
    command,
    notice,
    print_json,
    quiet_transformers,
    stderr,
    stdout,
)
from specprof.ui.distill_eagle3 import distill_eagle3
from specprof.ui.options import (
    AllowPickle,
    BatchSize,
    Concurrency,
    Device,
    Drafts,
    Dtype,
    NoChatTemplate,
    Target,
    TrustRemoteCode,
)
from specprof.ui.progress import distill_bar, interruptible, progress_bar

PROFILE_CONCURRENCY_HELP = (
    "Also time the cost model at these serving batch sizes (comma-separated or repeated, e.g. 1,4,16): "
    "t_T(n; b), t_D(b) and the catch-up for b sequences at once, stored in run.json; recommend then decides "
    "per batch size. Default: batch 1 only (one stream)."
)
ENGINE_HELP = (
    "transformers (hf is the same): load the models here. vllm: the target runs on vLLM servers (--url), model "
    "drafts on their own (--draft-url); model-free drafts are computed here. Exact at --temperature 0 (continuations, "
    "matches, the k-trace); T > 0 is refused (a server returns top log-probabilities, not the distributions "
    "Σ min(p, q) needs); target_entropy and forward times are not recorded (price with recommend --cost-ratio "
    "or --costs). --target names the tokenizer and config only."
)
RESPONSES_HELP = (
    "logged: no generation; one teacher-forced target pass over each prompt + its logged response "
    "(default when every record has a response). At --temperature 0 the response is used up to its first "
    "disagreement with the target's greedy choice (the agreement is reported; almost none: refused). At T > 0 "
    "the logged tokens are assumed to be samples of this target at the served --temperature and --top-p, and "
    "acceptance along them is Σ min(p, q). generate: ignore logged responses and generate."
)


@command()
def profile(
    prompts: Annotated[Path, typer.Argument(
        help="Prompt corpus: .jsonl, .csv, .parquet, .txt, or a directory of them.")],
    target: Target = None,
    draft: Drafts = None,
    k_max: Annotated[int, typer.Option("--k-max", help="Profile every draft length k = 1..K.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(
        "--max-new-tokens", help="Target tokens generated per prompt (logged responses: at most this many used).")
    ] = 128,
    temperature: Annotated[float, typer.Option(
        "--temperature", help="0: greedy, exact. >0: sampled, estimated.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass (with --temperature > 0).")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (per prompt, independent of batching).")] = 0,
    batch_size: BatchSize = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    out: Annotated[Path, typer.Option("--out", help="Report directory.")] = Path("specprof-report"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing report in --out.")] = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Finish an interrupted run in --out (same options); completed prompts are kept.")] = False,
    too_long: Annotated[str, typer.Option(
        "--too-long", help="Prompts that do not fit the context with --max-new-tokens: skip (warn) or error.")
    ] = "skip",
    limit: Annotated[int | None, typer.Option(
        "--limit", help="Only the first N prompts of each domain (default: all). The bundled run of sample_prompts/ "
        "(156 prompts, 128 new tokens each) takes about 3 minutes on 2 CPU cores, well under 10.")] = None,
    domain: Annotated[list[str] | None, typer.Option("--domain", help="Only these domains (repeatable).")] = None,
    no_chat_template: NoChatTemplate = False,
    trust_remote_code: TrustRemoteCode = False,
    allow_pickle: AllowPickle = False,
    responses: Annotated[str | None, typer.Option("--responses", help=RESPONSES_HELP)] = None,
    domain_field: Annotated[str | None, typer.Option(
        "--domain-field", help="The record field holding the domain, a dotted path (metadata.route). "
        "Default: \"domain\", else default.")] = None,
    shard: Annotated[str | None, typer.Option(
        "--shard", help="i/n: profile only shard i of n (prompts split by a hash of their id); "
        "combine the n reports with specprof merge.")] = None,
    concurrency: Annotated[list[str] | None, typer.Option("--concurrency", help=PROFILE_CONCURRENCY_HELP)] = None,
    engine: Annotated[str, typer.Option("--engine", help=ENGINE_HELP)] = "transformers",
    url: Annotated[list[str] | None, typer.Option(
        "--url", help="--engine vllm: an OpenAI-compatible vLLM server of the target (repeatable: requests are "
        "spread over all of them, several in flight on each).")] = None,
    draft_url: Annotated[list[str] | None, typer.Option(
        "--draft-url", help="--engine vllm: NAME=URL, the vLLM server of model draft NAME (e.g. "
        "early-exit:26=http://host:8001 serving `specprof export-draft early-exit:26`); adds NAME to the drafts.")
    ] = None,
) -> None:
    """Measure token-level acceptance of each draft against the target, per domain, for every k.

    One greedy target generation per prompt plus one teacher-forced pass per draft gives the exact
    speculative trace for every k = 1..K at once (at --temperature 0). Writes tokens.parquet,
    summary.parquet, blocks.parquet, prompts.parquet and run.json to --out. PROMPTS may be a traffic log
    with the served responses (chat completions, ShareGPT, OpenAI batch input + output files): see --responses.
    """
    # Long on purpose: most of it is the flag declarations (Typer reads them from the signature).
    from specprof.commands.profile import ProfileRequest, closing_lines, open_run

    request = ProfileRequest(
        prompts=prompts, target=target, drafts=tuple(draft or ()), k_max=k_max, max_new_tokens=max_new_tokens,
        temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size, device=device, dtype=dtype,
        out=out, overwrite=overwrite, resume=resume, too_long=too_long, limit=limit, domains=tuple(domain or ()),
        chat_template=not no_chat_template, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
        responses=responses, domain_field=domain_field, shard=shard, concurrency=tuple(concurrency or ()),
        argv=STATE.get("argv"),
    )
    request.check()  # flags fail before transformers is even imported
    if engine_named(engine) != TRANSFORMERS or url or draft_url:  # vLLM servers as the backend
        _profile_vllm(request, engine, tuple(url or ()), tuple(draft_url or ()))
        return
    quiet_transformers()
    with stderr.status("loading models…"):
        run = open_run(request, notice)
    try:
        if run.store.finished:
            stdout.print(f"the run in {out}/ already finished; nothing to resume")
            return
        if not run.corpus:
            run.finish_empty()
            stdout.print(f"shard {shard}: no prompt of the corpus falls in it; an empty report is written to "
                         f"{out}/ for specprof merge")
            return
        with interruptible(), progress_bar(run.n_prompts) as update:
            result = run.execute(progress=update, notice=notice)
    except KeyboardInterrupt:
        stderr.print(f"interrupted: {run.saved} of {len(run.corpus)} prompts are saved in {out}/; resume with:\n"
                     f"  {request.resume_command()}", markup=False, highlight=False)
        raise typer.Exit(code=130) from None
    finally:
        run.close()
    for d in dict.fromkeys(result.summary["draft"]):
        stdout.print(render.profile_table(result.summary, d))
    for line in closing_lines(result, temperature):
        stdout.print(line, markup=False, highlight=False)
    stdout.print(f"report written to {out}/ (recommend with: specprof recommend {out})")


def _profile_vllm(request, engine: str, urls: tuple[str, ...], draft_urls: tuple[str, ...]) -> None:
    """profile --engine vllm: the passes run on vLLM servers (`commands/profile_vllm`)."""
    from specprof.commands import profile_vllm

    if engine_named(engine) == TRANSFORMERS:
        raise SpecprofError(f"{'--url' if urls else '--draft-url'} needs --engine vllm")
    if engine_named(engine) != VLLM:
        raise SpecprofError(f"--engine {engine}: use transformers (hf) or vllm")
    result = profile_vllm.run(request, urls, draft_urls, notice, progress_bar)
    for d in dict.fromkeys(result.summary["draft"]):
        stdout.print(render.profile_table(result.summary, d))
    for line in result.lines:
        stdout.print(line, markup=False, highlight=False)


@command()
def merge(
    reports: Annotated[list[Path], typer.Argument(metavar="REPORT", help="The shard reports of one run.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the merged report.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing report in --out.")] = False,
) -> None:
    """Merge the reports of `profile --shard i/n` (all n shards of one run) into the unsharded report.

    Shards of different runs (models, settings, corpus, versions) are refused, naming the difference.
    Tokens and prompts are concatenated in the unsharded run's order and the summary and blocks recomputed,
    so the report equals the unsharded one; costs are priced with the mean of the shards' measured timings
    (each shard's are kept in run.json's merged_from).
    """
    from specprof.commands import merge

    run = merge.merge_reports(reports, out, overwrite)
    stdout.print(f"merged {len(run['merged_from'])} shards ({run['corpus']['n_prompts']} prompts) into {out}/ "
                 f"(recommend with: specprof recommend {out})")


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


@command(help=COSTS_HELP)
def costs(
    target: Target = None,
    draft: Drafts = None,
    k_max: Annotated[int, typer.Option(
        "--k-max", help="Time verification of n = 1..K+1 tokens (draft lengths 1..K).")] = 8,
    concurrency: Concurrency = None,
    context_tokens: Annotated[int | None, typer.Option(
        "--context-tokens", help="Tokens in each sequence's KV cache. Default: from --prompts, else 256.")] = None,
    prompts: Annotated[Path | None, typer.Option(
        "--prompts", help="A prompt corpus to take the typical context length (and its tokens) from.")] = None,
    no_chat_template: NoChatTemplate = False,
    device: Device = "auto",
    dtype: Dtype = "auto",
    out: Annotated[Path, typer.Option(
        "--out", help="A .json file, or a directory to hold costs.json.")] = Path("costs.json"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing costs file.")] = False,
    trust_remote_code: TrustRemoteCode = False,
    allow_pickle: AllowPickle = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the written record as JSON.")] = False,
) -> None:
    from specprof.core.pricing.batchcost import parse_batch_sizes

    check_range("--k-max", k_max, 1, 64)
    if context_tokens is not None:
        check_range("--context-tokens", context_tokens, 1)
    batch_sizes = parse_batch_sizes(concurrency or ())
    corpus = []
    if prompts is not None:
        from specprof.core.records.corpus import load_corpus

        corpus = load_corpus(prompts, (), None)
    check_once("--draft", draft or ())
    quiet_transformers()
    from specprof.commands import costs as costs_mod

    request = costs_mod.CostsRequest(
        target=target, drafts=tuple(draft or ()), k_max=k_max, batch_sizes=batch_sizes, context_tokens=context_tokens,
        prompts=tuple(corpus), chat_template=not no_chat_template, device=device, dtype=dtype, out=out,
        overwrite=overwrite, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    result = costs_mod.run(request, status=stderr.status)
    record, path = result.record, result.path
    if as_json:
        print_json(record)
        return
    from specprof.ui.batchview import costs_table

    stdout.print(costs_table(result.timings))
    stdout.print(f"device {record['device']}, dtype {record['dtype']}; costs written to {path} "
                 f"(price a report with: specprof recommend REPORT --costs {path})")


@command("export-draft")
def export_draft(
    draft: Annotated[str, typer.Argument(metavar="DRAFT", help="The early-exit draft to save: early-exit:L.")],
    out: Annotated[Path, typer.Option("--out", help="Model directory to write (safetensors and tokenizer).")],
    target: Annotated[str | None, typer.Option(
        "--target", help="Target model (default: the embedded SmolLM2).")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="float32, bfloat16 or float16.")] = "float32",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out.")] = False,
) -> None:
    """Save the target's first L layers (with its final norm and LM head) as a model directory, the
    draft model an engine needs for early-exit:L (vLLM: {"method": "draft_model", "model": DIR})."""
    if dtype not in ("float32", "bfloat16", "float16"):
        raise SpecprofError(f"--dtype {dtype}: use float32, bfloat16 or float16")
    quiet_transformers()
    import torch

    from specprof.engines.hf import export, models

    loaded = models.load_model(target, torch.device("cpu"), getattr(torch, dtype))
    path = export.export_early_exit(loaded, draft, out, overwrite)
    stdout.print(f"wrote {draft} of {loaded.name} to {path}/")


@command()
def distill(
    source: Annotated[Path, typer.Argument(
        help="A profile report directory (its continuations are reused) or a prompt corpus (generated first).")],
    out: Annotated[Path, typer.Option("--out", help="DRAFT_DIR: an ordinary transformers model directory.")],
    layers: Annotated[int, typer.Option("--layers", help="L: the draft runs the target's first L layers (frozen) plus "
        "one trained layer (a copy of layer L), the final norm and the LM head. Required unless --arch eagle3.")] = 0,
    arch: Annotated[str, typer.Option("--arch", help="early-exit (the layers above) or eagle3: an EAGLE-3 head vLLM "
                                      "serves as {\"method\": \"eagle3\"} (docs/eagle3.md).")] = "early-exit",
    target: Annotated[str | None, typer.Option(
        "--target", help="Target model: HF id, local directory or .gguf. Default: the report's target, "
        "or the embedded SmolLM2-135M-Instruct for a corpus.")] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training prompts (at most).")] = 16,
    lr: Annotated[float | None, typer.Option(
        "--lr", help="Peak learning rate (AdamW, cosine decay). Default: per objective.")] = None,
    objective: Annotated[str, typer.Option(
        "--objective", help="kl: KL to the target's distribution; ce: cross-entropy on the target's tokens.")
    ] = "kl",
    max_minutes: Annotated[float, typer.Option(
        "--max-minutes", help="Wall-clock bound on the whole run (generation included); training stops early "
        "enough to save.")] = 12.0,
    holdout: Annotated[float, typer.Option(
        "--holdout", help="Fraction of prompts per domain held out for early stopping and the before/after table "
        "(by prompt, never by token).")] = 0.1,
    seed: Annotated[int, typer.Option(
        "--seed", help="Seed for the held-out split, batch order and initialisation.")] = 0,
    max_new_tokens: Annotated[int | None, typer.Option(
        "--max-new-tokens", help="Corpus only: target tokens per prompt (default 128, as profile).")] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", help="Corpus only: prompts per generation batch (default: 32 on a CPU, 64 on CUDA).")
    ] = None,
    no_chat_template: Annotated[bool, typer.Option(
        "--no-chat-template", help="Corpus only: feed prompts as plain text.")] = False,
    device: Device = "auto",
    dtype: Dtype = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing DRAFT_DIR.")] = False,
    trust_remote_code: TrustRemoteCode = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Train a small draft on the target's own continuations and save it as a model directory.

    The draft is the target's first L layers (frozen), one trained layer, the norm and the LM head:
    an ordinary transformers model (--draft DRAFT_DIR in profile, a draft model in engines);
    --arch eagle3: an EAGLE-3 head. Prints held-out α per domain before and after;
    DRAFT_DIR/distill.json records it with the settings, data size and time.
    """
    started = time.perf_counter()  # long on purpose: mostly flag declarations (Typer reads the signature)
    if arch != EARLY_EXIT:  # an EAGLE-3 head (`ui.distill_eagle3`)
        return distill_eagle3(arch, source, out, target, max_minutes, holdout, seed, max_new_tokens, batch_size,
                              no_chat_template, device, dtype, overwrite, trust_remote_code, allow_pickle, started)
    for flag, value in (("--layers", layers), ("--epochs", epochs)):
        check_range(flag, value, 1)
    check_range("--max-minutes", max_minutes, 0, lo_open=True)
    if lr is not None:
        check_range("--lr", lr, 0, lo_open=True)
    if objective not in ("kl", "ce"):
        raise SpecprofError(f"--objective {objective}: use kl or ce")
    quiet_transformers()
    from specprof.commands import distill as distill_mod
    from specprof.core.answers import distill_eval

    request = distill_mod.DistillRequest(
        source=source, out=out, layers=layers, target=target, epochs=epochs, lr=lr, objective=objective,
        max_minutes=max_minutes, holdout=holdout, seed=seed, max_new_tokens=max_new_tokens, batch_size=batch_size,
        no_chat_template=no_chat_template, device=device, dtype=dtype, overwrite=overwrite,
        trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    with distill_bar() as events:
        result = distill_mod.distill(request, started=started, status=stderr.status, events=events)
    record = result.record
    stdout.print(distill_eval.render_table(
        result.table, f"early-exit:{layers}",
        f"held-out α per domain ({record['data']['heldout_prompts']} prompts not trained on; "
        "they also chose when to stop, so profile other prompts to measure the gain)"
    ))
    t = record["training"]
    stdout.print(f"{t['steps']} steps ({t['epochs']:.1f} epochs, stopped by {t['stopped_by']}) in "
                 f"{record['time_s']['total_s'] / 60:.1f} min; draft written to {out}/ "
                 f"(profile it with: specprof profile PROMPTS --draft early-exit:{layers} --draft {out})")
