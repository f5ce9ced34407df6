"""`specprof verify`: check a report's prediction with a real speculative run, here or on a vLLM server.

With the transformers engine the loop runs in this process (`commands.verify`); with `--engine vllm`
the report's prompts go to a vLLM server and its /metrics counters are compared
(`commands.verify_vllm`). Exit 1 when a prediction fails at temperature 0, 2 for bad input or a
server that fails mid-run (what was compared up to there is still printed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from specprof.core.vocabulary import TRANSFORMERS, VLLM, engine_named
from specprof.errors import SpecprofError
from specprof.ui import render
from specprof.ui.app import check_range, command, print_json, quiet_transformers, stderr, stdout
from specprof.ui.progress import progress_bar


@command()
def verify(
    report: Annotated[Path, typer.Argument(metavar="REPORT", help="A report directory written by `specprof profile`.")],
    k: Annotated[list[int] | None, typer.Option(
        "--k", help="Draft length (repeatable). Default: each domain's best k by predicted speedup.")] = None,
    limit: Annotated[int | None, typer.Option(
        "--limit", help="Only the first N prompts of each domain (default: all).")] = None,
    draft: Annotated[list[str] | None, typer.Option(
        "--draft", help="Only this draft of the report (repeatable).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")] = False,
    engine: Annotated[str, typer.Option(
        "--engine", help="transformers (or hf): run the loop here; vllm: compare with a vLLM server's /metrics "
        "counters (--url or --launch).")] = "transformers",
    url: Annotated[str | None, typer.Option(
        "--url", help="vllm: a running vLLM server started with the draft's --speculative-config "
        "(e.g. http://127.0.0.1:8000).")] = None,
    launch: Annotated[bool, typer.Option(
        "--launch", help="vllm: start a server per k from --vllm-python, stop it after.")] = False,
    vllm_python: Annotated[str | None, typer.Option(
        "--vllm-python", help="vllm --launch: a Python with vLLM installed (e.g. .venv-vllm/bin/python).")] = None,
    draft_model_dir: Annotated[str | None, typer.Option(
        "--draft-model-dir", help="vllm: the model directory that serves the draft (early-exit:L: "
        "specprof export-draft early-exit:L --out DIR).")] = None,
    concurrency: Annotated[list[str] | None, typer.Option(
        "--concurrency", help="vllm: B concurrent streams for each batch size B (e.g. 1,4): output tokens/s with and "
        "without speculation, predicted vs measured speedup per B.")] = None,
    baseline_url: Annotated[str | None, typer.Option(
        "--baseline-url", help="vllm --concurrency with --url: the same target served without "
        "--speculative-config.")] = None,
    costs_path: Annotated[Path | None, typer.Option(
        "--costs", help="--concurrency: predict with the times of this file (specprof costs) instead of the "
        "report's.")] = None,
) -> int:
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
    # Long on purpose: most of it is the flag declarations (Typer reads them from the signature).
    if limit is not None:
        check_range("--limit", limit, 1)
    for value in k or ():
        check_range("--k", value, 1)
    engine = engine_named(engine) or engine  # hf is transformers
    if concurrency or baseline_url or costs_path:
        return _verify_concurrency(report, engine, tuple(concurrency or ()), tuple(k or ()), limit, tuple(draft or ()),
                                   json_out, url, baseline_url, vllm_python if launch else None, draft_model_dir,
                                   costs_path)
    if engine == VLLM:
        return _verify_vllm(report, tuple(k or ()), limit, tuple(draft or ()), json_out, url, launch, vllm_python,
                            draft_model_dir)
    if engine != TRANSFORMERS:
        raise SpecprofError(f"--engine {engine}: use transformers or vllm")
    if url or launch or vllm_python or draft_model_dir:
        raise SpecprofError("--url, --launch, --vllm-python and --draft-model-dir go with --engine vllm")
    quiet_transformers()
    from specprof.commands import verify as verifier

    with stderr.status("loading the report and models…"):
        plan = verifier.prepare(str(report), k or (), limit, draft or ())
    with progress_bar(plan.total_generations, "verifying", "generations") as update:
        result = verifier.execute(plan, progress=update)
    if json_out:
        print_json(result.as_dict())
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
    return 1 if result.failed else 0


def _top2_margins(source: str, prompt: list[int], continuation: list[int]) -> list[float]:
    """The draft's top-2 logit margins, by transformers (torch loads here, only when a prompt needs explaining)."""
    from specprof.engines.hf import margins

    return margins.top2_margins(source, prompt, continuation)


def _verify_vllm(report: Path, ks: tuple[int, ...], limit: int | None, drafts: tuple[str, ...], json_out: bool,
                 url: str | None, launch: bool, vllm_python: str | None, draft_model_dir: str | None) -> int:
    """verify --engine vllm: the work is in commands.verify_vllm, the tables in ui.render_vllm."""
    from specprof.commands import verify_vllm
    from specprof.ui import render_vllm

    if launch != (vllm_python is not None) or (launch and url):
        raise SpecprofError("--engine vllm: pass either --url URL or --launch --vllm-python PY")
    if len(drafts) > 1:
        raise SpecprofError("--engine vllm: one --draft at a time (a server runs one speculative config)")
    options = verify_vllm.Options(drafts[0] if drafts else None, ks, limit, url, vllm_python, draft_model_dir,
                                  top2_margins=_top2_margins)
    with stderr.status("verifying against vLLM…") as status:
        result = verify_vllm.run(str(report), options, progress=lambda m: status.update(m))
    if json_out:
        print_json(result.as_dict())
    else:
        sampled = result.temperature > 0
        stdout.print(render_vllm.sampled_table(result) if sampled else render_vllm.counters_table(result))
        for line in render_vllm.lines(result):
            stdout.print(line, highlight=False)
        stdout.print(render_vllm.summary_line(result), highlight=False)
    if result.error:
        render.print_error(stderr, result.error)
        return 2
    return 1 if result.mismatch else 0


def _verify_concurrency(report: Path, engine: str, concurrency: tuple[str, ...], ks: tuple[int, ...],
                        limit: int | None, drafts: tuple[str, ...], json_out: bool, url: str | None,
                        baseline_url: str | None, vllm_python: str | None, draft_model_dir: str | None,
                        costs_path: Path | None) -> int:
    """verify --concurrency: the work is in commands.verify_concurrency, the table in ui.render_concurrency."""
    from specprof.commands import verify_concurrency as vc
    from specprof.core.pricing.batchcost import parse_batch_sizes
    from specprof.ui import render_concurrency

    if engine != VLLM:
        raise SpecprofError(vc.NO_BATCHED_LOOP)
    if not concurrency:
        raise SpecprofError("--baseline-url and --costs go with --concurrency")
    if len(ks) > 1 or len(drafts) > 1:
        raise SpecprofError("verify --concurrency: one --draft and one --k at a time (a server runs one config)")
    options = vc.Options(parse_batch_sizes(concurrency), drafts[0] if drafts else None, ks[0] if ks else None,
                         limit, url, baseline_url, vllm_python, draft_model_dir,
                         str(costs_path) if costs_path else None)
    with stderr.status("verifying at concurrency against vLLM…") as status:
        result = vc.run(str(report), options, progress=lambda m: status.update(m))
    if json_out:
        print_json(result.as_dict())
    else:
        stdout.print(render_concurrency.table(result))
        for line in render_concurrency.lines(result):
            stdout.print(line, highlight=False)
    if result.error:
        render.print_error(stderr, result.error)
        return 2
    return 0
