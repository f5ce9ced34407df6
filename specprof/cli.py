"""The `specprof` command line: parse, call one function, render.

Every command runs through `_run`, the one place where `SpecprofError` becomes a single line on
stderr and exit code 2 (`--debug` shows the traceback instead). Heavy modules (torch,
transformers) are imported inside the commands that need them, so `recommend`, `gate` and
`compare` start fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import typer
from rich.console import Console

from specprof import __version__, render
from specprof.errors import SpecprofError

HELP = """Profile speculative-decoding acceptance per domain and draft length before turning speculation on.

Names as in vLLM: tokens/iter is the mean acceptance length (accepted draft tokens + the bonus
token, per target forward pass); draft acceptance rate is accepted / drafted tokens at that k;
α is the per-token acceptance rate, which does not depend on k.
"""

app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)
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
    if debug:
        STATE["debug"] = True


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


DEFAULT_DRAFTS = ("ngram", "early-exit:26")


@app.command()
def profile(
    prompts: Path = typer.Argument(..., help="Prompt corpus: .jsonl, .csv, .parquet, .txt, or a directory of them."),
    target: str = typer.Option(
        None, "--target", help="Target model: HF id, local directory or .gguf. Default: embedded SmolLM2-135M-Instruct."
    ),
    draft: list[str] = typer.Option(
        None,
        "--draft",
        help="Draft (repeatable): a model (id, directory, .gguf), early-exit:L (the target's first L layers) "
        f"or ngram[:N] (prompt lookup). Default: {' and '.join(DEFAULT_DRAFTS)}.",
    ),
    k_max: int = typer.Option(8, "--k-max", help="Profile every draft length k = 1..K."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", help="Target tokens generated per prompt."),
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
) -> None:
    """Measure token-level acceptance of each draft against the target, per domain, for every k.

    One greedy target generation per prompt plus one teacher-forced pass per draft gives the exact
    speculative trace for every k = 1..K at once (at --temperature 0). Writes tokens.parquet,
    summary.parquet, blocks.parquet, prompts.parquet and run.json to --out.
    """

    def go() -> None:
        from specprof.profiler import Settings

        check_range("--k-max", k_max, 1, 64)
        check_range("--max-new-tokens", max_new_tokens, 1)
        check_range("--temperature", temperature, 0)
        check_range("--top-p", top_p, 0, 1, lo_open=True)
        if batch_size is not None:
            check_range("--batch-size", batch_size, 1)
        if limit is not None:
            check_range("--limit", limit, 1)
        from specprof.corpus import load_corpus

        corpus = load_corpus(prompts, domain or (), limit)
        _quiet_transformers()
        import torch

        from specprof import drafts, models, profiler
        from specprof.store import RunStore

        dev = models.resolve_device(device)
        dt = models.resolve_dtype(dtype, dev)
        settings = Settings(
            k_max=k_max,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            batch_size=batch_size or (64 if dev.type == "cuda" else 32),
            chat_template=not no_chat_template,
        )
        specs = list(draft or DEFAULT_DRAFTS)
        if len(set(specs)) != len(specs):
            raise SpecprofError(f"--draft {next(s for s in specs if specs.count(s) > 1)}: given twice")
        with stderr.status("loading models…"):
            tgt = models.load_model(target, dev, dt, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
            loaded = [
                drafts.load_draft(s, tgt, dev, dt, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
                for s in specs
            ]
        run_info = {
            "target": tgt.describe(),
            "drafts": [d.info for d in loaded],
            "device": str(dev),
            "dtype": str(dt).removeprefix("torch."),
            "torch_version": torch.__version__,
            "settings": {
                "k_max": settings.k_max,
                "max_new_tokens": settings.max_new_tokens,
                "temperature": settings.temperature,
                "top_p": settings.top_p,
                "seed": settings.seed,
                "batch_size": settings.batch_size,
                "chat_template": settings.chat_template,
            },
            "corpus": {"path": str(prompts), "domains": domain or [], "limit": limit, "n_prompts": len(corpus)},
        }
        store = RunStore.create(out, run_info, overwrite=overwrite)
        with _progress_bar(len(corpus)) as update:
            result = profiler.run_profile(corpus, tgt, loaded, settings, store, progress=update)
        for d in dict.fromkeys(result.summary["draft"]):
            stdout.print(render.profile_table(result.summary, d))
        stdout.print(f"report written to {out}/ (recommend with: specprof recommend {out})")

    _run(go)


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
    epochs: int = typer.Option(8, "--epochs", help="Passes over the training prompts (at most)."),
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
        from specprof import distill as distill_mod
        from specprof import distill_eval, models

        src = distill_mod.read_source(source)
        if src.kind == "report":
            given = [f for f, v in [("--max-new-tokens", max_new_tokens), ("--batch-size", batch_size),
                                    ("--no-chat-template", no_chat_template or None)] if v is not None]
            if given:
                raise SpecprofError(f"{given[0]}: only for a prompt corpus; a report's continuations are reused")
        if max_new_tokens is not None:
            check_range("--max-new-tokens", max_new_tokens, 1)
        if batch_size is not None:
            check_range("--batch-size", batch_size, 1)
        settings = distill_mod.DistillSettings(
            layers=layers, epochs=epochs, objective=objective, holdout=holdout, seed=seed, max_minutes=max_minutes,
            **({"lr": lr} if lr is not None else {"lr": distill_mod.DEFAULT_LR[objective]}),
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
            result.table, layers, f"held-out α per domain ({record['data']['heldout_prompts']} prompts not trained on)"
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

        return events

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()


class _progress_bar:
    """A Rich progress bar on stderr: prompts done, generated tokens per second, ETA."""

    def __init__(self, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("profiling"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("prompts"),
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
            rate = p.tokens_done / max(time.perf_counter() - start, 1e-9)
            self.progress.update(self.task, completed=p.prompts_done, rate=f"{rate:.0f} tok/s")

        return update

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()


def main() -> None:
    """Console-script entry point: usage errors become one line and exit code 2, like our own errors."""
    try:
        code = app(standalone_mode=False)
    except click.UsageError as e:
        message = e.format_message()
        if e.ctx is not None and e.ctx.command_path:
            message = f"{message} (see: {e.ctx.command_path} --help)"
        render.print_error(stderr, message)
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        stderr.print("aborted")
        sys.exit(130)
    sys.exit(code or 0)
