"""`specprof profile`, the run: corpus → models → a run store → the profile, resumable.

`open_run` checks every flag, reads the corpus (a shard of it with `--shard`; logged responses
with `--responses`), checks each draft spec before any weights load, loads the models, prepares the
prompts (bad prompts fail before any write) and creates or resumes the run directory. `ProfileRun`
then runs the batches (`engines.hf.profiler.run_profile`), or writes an empty shard's report.

Nothing here prints: progress and notices go through callbacks, and interruptions (Ctrl-C,
SIGTERM) are the caller's to catch: every finished batch is already saved, and `saved` says how
many prompts.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specprof.core.flags import check_once, check_range
from specprof.core.pricing.batchcost import parse_batch_sizes
from specprof.core.records import logs, shards
from specprof.core.records.corpus import Prompt, load_corpus
from specprof.core.records.store import RunStore
from specprof.errors import SpecprofError

Notice = Callable[[str], None]


@dataclass(frozen=True)
class ProfileRequest:
    """The flags of `specprof profile`, as given."""

    prompts: Path
    target: str | None = None
    drafts: tuple[str, ...] = ()
    k_max: int = 8
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int | None = None  # None: `models.default_batch_size` for the device
    device: str = "auto"
    dtype: str = "auto"
    out: Path = Path("specprof-report")
    overwrite: bool = False
    resume: bool = False
    too_long: str = "skip"
    limit: int | None = None
    domains: tuple[str, ...] = ()
    chat_template: bool = True
    trust_remote_code: bool = False
    allow_pickle: bool = False
    responses: logs.Responses | None = None  # "logged", "generate", or None: logged when every record has a response
    domain_field: str | None = None
    shard: str | None = None  # "i/n"
    concurrency: tuple[str, ...] = ()  # batch sizes to time the costs at, as given
    argv: tuple[str, ...] | None = None  # the command line, to print the one that resumes the run

    def check(self) -> None:
        check_range("--k-max", self.k_max, 1, 64)
        check_range("--max-new-tokens", self.max_new_tokens, 1)
        check_range("--temperature", self.temperature, 0)
        check_range("--top-p", self.top_p, 0, 1, lo_open=True)
        if self.batch_size is not None:
            check_range("--batch-size", self.batch_size, 1)
        if self.limit is not None:
            check_range("--limit", self.limit, 1)
        if self.too_long not in ("skip", "error"):
            raise SpecprofError(f"--too-long {self.too_long}: use skip or error")
        if self.resume and self.overwrite:
            raise SpecprofError("--resume and --overwrite: choose one")
        check_once("--draft", self.drafts)

    def resume_command(self) -> str:
        """The command line that resumes this run: the user's own arguments plus --resume."""
        argv = list(self.argv) if self.argv is not None else ["profile", str(self.prompts), "--out", str(self.out),
                                                               "..."]
        return shlex.join(["specprof", *[a for a in argv if a not in ("--overwrite", "--resume")], "--resume"])


@dataclass
class ProfileRun:
    """An opened run: the corpus, the loaded models and the run directory, ready to profile."""

    request: ProfileRequest
    corpus: list[Prompt]
    target: Any  # engines.hf.models.LoadedModel
    drafts: list[Any]  # engines.hf.drafts.Draft
    settings: Any  # engines.hf.profiler.Settings
    prepared: Any  # what profiler.prepare returned
    store: RunStore
    batch_sizes: tuple[int, ...] = (1,)
    notes: list[str] = field(default_factory=list)

    @property
    def n_prompts(self) -> int:
        return len(self.prepared[0])

    @property
    def saved(self) -> int:
        return len(self.store.run["completed_prompts"])

    def execute(self, progress: Callable | None = None, notice: Notice | None = None) -> Any:
        """Profile every prompt not saved yet; returns `profiler.ProfileResult`."""
        from specprof.engines.hf import profiler

        return profiler.run_profile(self.corpus, self.target, self.drafts, self.settings, self.store,
                                    progress=progress, notice=notice, prepared=self.prepared,
                                    batch_sizes=self.batch_sizes)

    def finish_empty(self) -> None:
        """A shard that holds no prompt still writes a report, so `merge` gets all n."""
        shards.finish_empty(self.store)

    def close(self) -> None:
        self.store.close()


def read_corpus(req: ProfileRequest, notice: Notice) -> tuple[list[Prompt], str, dict | None]:
    """The prompts to profile, whether their logged responses are used, and the shard record."""
    notes: list[str] = []
    corpus = load_corpus(req.prompts, req.domains, req.limit, req.domain_field, notes)
    corpus, mode = logs.choose_responses(corpus, req.responses)
    shard_info = None
    if req.shard is not None:
        corpus, shard_info = shards.take_shard(corpus, *shards.parse_shard(req.shard))
    for note in notes:
        notice(note)
    return corpus, mode, shard_info


def open_run(req: ProfileRequest, notice: Notice) -> ProfileRun:
    """Check, read, load and open the run directory (see the module docstring)."""
    req.check()
    batch_sizes = parse_batch_sizes(req.concurrency)
    corpus, mode, shard_info = read_corpus(req, notice)
    started = time.perf_counter()
    from specprof.engines.hf import drafts, models, profiler

    device = models.resolve_device(req.device)
    dtype = models.resolve_dtype(req.dtype, device)
    settings = profiler.Settings(
        batch_size=req.batch_size or models.default_batch_size(device), k_max=req.k_max,
        max_new_tokens=req.max_new_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
        chat_template=req.chat_template, responses=mode,
    )
    drafts.check_specs(req.drafts, req.target, req.trust_remote_code)
    target, loaded = drafts.load_target_and_drafts(req.target, req.drafts, device, dtype, req.trust_remote_code,
                                                   req.allow_pickle)
    # bad prompts fail before any write; an empty shard has none
    prepared = profiler.prepare(corpus, target, loaded, settings, req.too_long) if corpus else ([], [])
    run_info = profiler.describe_run(target, loaded, settings, corpus, str(req.prompts), list(req.domains),
                                     req.limit, device, dtype)
    if shard_info is not None:
        run_info["shard"] = shard_info
    store = (RunStore.resume(req.out, run_info) if req.resume
             else RunStore.create(req.out, run_info, overwrite=req.overwrite))
    profiler.add_phases(store, {"loading": time.perf_counter() - started})
    return ProfileRun(req, corpus, target, loaded, settings, prepared, store, batch_sizes or (1,))


def closing_lines(result: Any, temperature: float) -> list[str]:
    """What the terminal says after the tables: disturbed timings, and how far logged responses agreed."""
    from specprof.core.pricing.costmodel import timing_warning

    lines = []
    # The same check recommend makes: say it now, while the user can still re-run on an idle machine.
    if (warning := timing_warning(result.run["timings"]["target_forward_s"])) is not None:
        lines.append(f"warning: {warning}")
    if result.run.get("logged_responses"):
        rows = result.run["logged_responses"]["prompts"]
        lines += [line for line in (logs.describe_agreement(logs.pool_agreement(rows), temperature == 0),
                                    logs.describe_domains(rows, temperature == 0)) if line]
    return lines
