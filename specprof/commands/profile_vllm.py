"""`profile --engine vllm`: set up a profile whose target (and model drafts) run on vLLM servers.

Here: the flags (`--url`, `--draft-url NAME=URL`), the target's tokenizer (read from --target's
directory or id, never its weights: prompts are encoded exactly as the transformers engine encodes
them, chat template included), the checks that every server is up and serves a model with the
target's tokenizer (`/detokenize` of the prompts' ids), the context limit (the smallest of the
target's config and every server's max_model_len), run.json, and the store. The HTTP passes and
the records are `engines/vllm/profile.py`'s.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from specprof.commands.profile import ProfileRequest, read_corpus
from specprof.core.pricing.batchcost import parse_batch_sizes
from specprof.core.records import reportfiles, tokentext
from specprof.core.records.corpus import Prompt, fingerprint
from specprof.core.records.fingerprint import directory_fingerprint
from specprof.core.simulation import kinds
from specprof.core.vocabulary import EARLY_EXIT, VLLM, VLLM_NGRAM
from specprof.engines import modelfiles, text
from specprof.engines.text import auto_detokenizer
from specprof.engines.vllm import profile as vprofile
from specprof.engines.vllm.client import VllmClient
from specprof.errors import SpecprofError

DEFAULT_DRAFTS = (VLLM_NGRAM,)  # model-free: needs no server; model drafts come with --draft-url


@dataclass(frozen=True)
class Options:
    urls: Sequence[str]
    draft_urls: Sequence[str] = ()  # "NAME=URL"
    target: str | None = None
    drafts: Sequence[str] = ()
    settings: vprofile.Settings = field(default_factory=vprofile.Settings)
    out: Path = Path("specprof-report")
    overwrite: bool = False
    resume: bool = False
    too_long: str = "skip"
    responses: str = "generate"
    trust_remote_code: bool = False
    corpus_path: str = ""
    domains: Sequence[str] = ()
    limit: int | None = None
    timeout_s: float = 600.0


def parse_draft_urls(values: Sequence[str]) -> dict[str, str]:
    """`--draft-url NAME=URL` values → {draft name: URL}."""
    out: dict[str, str] = {}
    for value in values:
        m = re.fullmatch(r"(.+?)=(https?://\S+)", value.strip())
        if not m:
            raise SpecprofError(f"--draft-url {value}: expected NAME=URL, e.g. early-exit:26=http://127.0.0.1:8001")
        if m.group(1) in out:
            raise SpecprofError(f"--draft-url {m.group(1)}: given twice")
        out[m.group(1)] = m.group(2)
    return out


def target_source(target: str | None) -> tuple[str, str]:
    """(name, where its tokenizer and config are read): a directory or hub id; a .gguf (the embedded
    default included) is converted once into specprof's cache, as the transformers engine does."""
    if target is None or target in ("default", modelfiles.DEFAULT_TARGET):
        return modelfiles.DEFAULT_TARGET, str(modelfiles.gguf_to_directory(modelfiles.default_gguf_path(),
                                                                           hf_id=modelfiles.DEFAULT_HF_ID))
    if target.lower().endswith(".gguf"):
        if not Path(target).is_file():
            raise SpecprofError(f"--target {target}: no such GGUF file")
        return target, str(modelfiles.gguf_to_directory(Path(target)))
    return target, target


@dataclass
class TargetInfo:
    name: str
    source: str
    tokenizer: Any
    eos_ids: list[int]
    context: int | None
    num_layers: int | None
    architecture: str | None

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "fingerprint": _fingerprint(self.source),
                "architecture": self.architecture, "num_layers": self.num_layers}


def load_target(target: str | None, trust_remote_code: bool) -> TargetInfo:
    """The target's tokenizer, EOS ids, context and depth: tokenizer and config files only, no weights."""
    name, source = target_source(target)
    try:
        tokenizer = text.load_tokenizer(source, trust_remote_code)
        config = text.load_config(source, trust_remote_code)
    except (OSError, ValueError) as e:
        raise SpecprofError(f"--target {target}: cannot read its tokenizer and config ({str(e).splitlines()[0]}); "
                            "--engine vllm needs the target's directory or a cached hub id (no weights)") from None
    eos = text.eos_ids(text.generation_eos(source), tokenizer)
    layout = config.get("text_config") or config
    return TargetInfo(name, source, tokenizer, eos, layout.get("max_position_embeddings"),
                      layout.get("num_hidden_layers"), (config.get("architectures") or [None])[0])


def _fingerprint(source: str) -> str | None:
    """The transformers engine's fingerprint of a local directory (file names, sizes, JSON contents)."""
    directory = Path(source)
    return directory_fingerprint(directory) if directory.is_dir() else None


def make_drafts(specs: Sequence[str], draft_urls: dict[str, str], target: TargetInfo,
                timeout_s: float) -> list[vprofile.Draft]:
    """The drafts: model-free ones computed here, model drafts from their --draft-url servers."""
    out: list[vprofile.Draft] = []
    for spec in specs:
        parsed = kinds.parse(spec)
        kind = parsed.kind
        if kind.proposal is kinds.Proposal.HEAD:
            raise SpecprofError(f"--draft {spec}: a vLLM server cannot return a head's proposals from every block "
                                "start; profile EAGLE-3 heads with the transformers engine (without --engine vllm), "
                                "then compare with `specprof verify REPORT --engine vllm`")
        if spec in draft_urls and kind.model_free:
            raise SpecprofError(f"--draft-url {spec}: a model-free draft needs no server (it is computed from the "
                                "tokens); drop its --draft-url")
        proposer = kind.proposer(parsed, target.eos_ids)
        if proposer is not None:
            out.append(vprofile.LocalDraft(spec, kinds.describe_proposer(spec, proposer), proposer=proposer))
        elif kind.model_free:  # specprof's own n-gram lookup
            out.append(vprofile.LocalDraft(spec, {"name": spec, **kind.describe(parsed)}, max_ngram=parsed.value))
        else:
            if spec not in draft_urls:
                how = (f"serve `specprof export-draft {spec} --out DIR` and pass --draft-url {spec}=URL"
                       if kind.name == EARLY_EXIT else f"serve it with vLLM and pass --draft-url {spec}=URL")
                raise SpecprofError(f"--draft {spec}: a model draft needs its own vLLM server with --engine vllm "
                                    f"({how})")
            info = {"name": spec, "kind": kind.name}
            if kind.name == EARLY_EXIT:
                if target.num_layers is not None:
                    kinds.check_early_exit(spec, parsed.value, target.num_layers)
                info |= {"layers": parsed.value, "of_layers": target.num_layers}
            out.append(vprofile.RemoteDraft(spec, VllmClient(draft_urls[spec], timeout_s), info))
    return out


def check_server(client: VllmClient, detok: tokentext.Detokenizer, id_lists: Sequence[Sequence[int]],
                 who: str) -> int | None:
    """The server answers and serves the target's tokenizer; its max_model_len (None: not said)."""
    from specprof.commands.vllm_common import check_tokenizer

    client.model()  # unreachable: one line naming the URL
    check_tokenizer(client, detok, id_lists, target=who, whose="the --target's")
    return client.max_model_len()


def profile(options: Options, corpus: Sequence[Prompt], shard_info: dict | None,
            progress_bar: Callable[[int], Any]) -> tuple[pd.DataFrame, list[str]]:
    """Profile `corpus` through the servers; the summary and the lines to print after it."""
    # Long on purpose: the run in order (servers checked, store opened, batches sent, report finished).
    from specprof.core.records import shards
    from specprof.core.records.store import RunStore
    from specprof.engines.text import Encoded, drop_too_long, encode_prompt, make_batches

    settings = options.settings
    vprofile.check_settings(settings)
    if options.responses == "logged":
        raise SpecprofError("--engine vllm generates the target's continuations; logged responses are profiled by "
                            "the transformers engine (--engine hf), or pass --responses generate")
    started = time.perf_counter()
    draft_urls = parse_draft_urls(options.draft_urls)
    specs = list(options.drafts or DEFAULT_DRAFTS)
    specs += [name for name in draft_urls if name not in specs]
    if len(set(specs)) != len(specs):
        raise SpecprofError(f"--draft {next(s for s in specs if specs.count(s) > 1)}: given twice")
    for spec in specs:
        kinds.parse(spec)  # a bad --draft fails before anything is read
    target = load_target(options.target, options.trust_remote_code)
    drafts = make_drafts(specs, draft_urls, target, options.timeout_s)
    clients = [VllmClient(url, options.timeout_s) for url in dict.fromkeys(options.urls)]
    spread = vprofile.Spread(clients)
    encoded = [Encoded(p, encode_prompt(target.tokenizer, p, settings.chat_template)) for p in corpus]
    detok = tokentext.load({"target": {"name": target.name, "source": target.source}}, fallback=auto_detokenizer)
    ids = [e.ids for e in encoded] or [[0]]
    limits = [target.context]
    limits += [check_server(c, detok, ids, "--target") for c in clients]
    limits += [check_server(d.client, detok, ids, f"--target (draft {d.name})")
               for d in drafts if isinstance(d, vprofile.RemoteDraft)]
    known = [n for n in limits if n]
    context = min(known) if known else None
    # one position stays free: a draft's teacher-forced request makes its server generate one token
    kept, skipped = drop_too_long(encoded, [context - 1 if context else None], settings.max_new_tokens,
                                  options.too_long) if encoded else ([], [])
    run_info = describe_run(options, target, drafts, clients, corpus)
    if shard_info is not None:
        run_info["shard"] = shard_info
    store = (RunStore.resume(options.out, run_info) if options.resume
             else RunStore.create(options.out, run_info, overwrite=options.overwrite))
    lines = []
    try:
        if store.finished:
            return store_summary(options.out), [f"the run in {options.out}/ already finished; nothing to resume"]
        store.update(skipped_prompts=skipped, phases_s={**(store.run.get("phases_s") or {}),
                                                         "loading": time.perf_counter() - started})
        if skipped:
            lines.append(f"skipped {len(skipped)} prompt(s) longer than the servers' context: "
                         + ", ".join(skipped[:5]) + (" …" if len(skipped) > 5 else ""))
        if not corpus:
            shards.finish_empty(store)
            return store_summary(options.out), [f"no prompt of the corpus falls in this shard; an empty report is "
                                                f"written to {options.out}/ for specprof merge"]
        with progress_bar(len(kept)) as update:
            vprofile.run_profile(make_batches(kept, settings.batch_size), spread, drafts, settings, target.eos_ids,
                                 context, store, update)
    finally:
        store.close()
    lines += [
        "engine vllm: continuations, matches and the k-trace are exact (greedy); target_entropy is not recorded "
        "(a server returns top log-probabilities only).",
        "no forward times were measured (remote servers): the speedups above assume a free draft and one-step "
        "verification (cost ratio 0, an upper bound). Price the report with: specprof recommend "
        f"{options.out} --cost-ratio C, or --costs FILE (specprof costs).",
        f"report written to {options.out}/",
    ]
    return store_summary(options.out), lines


def store_summary(out: Path) -> pd.DataFrame:
    return reportfiles.load_report(out).frame("summary")


def describe_run(options: Options, target: TargetInfo, drafts: Sequence[vprofile.Draft],
                 clients: Sequence[VllmClient], corpus: Sequence[Prompt]) -> dict:
    """run.json's identity entries (as the transformers engine's `describe_run`) and how it was served."""
    s = options.settings
    return {
        "target": target.describe(),
        "drafts": [d.info for d in drafts],
        "device": VLLM,
        "dtype": "served",
        "settings": {"k_max": s.k_max, "max_new_tokens": s.max_new_tokens, "temperature": s.temperature,
                     "top_p": s.top_p, "seed": s.seed, "batch_size": s.batch_size, "chat_template": s.chat_template},
        "corpus": {"path": options.corpus_path, "domains": list(options.domains), "limit": options.limit,
                   "n_prompts": len(corpus)},
        "corpus_fingerprint": fingerprint(corpus),
        "engine": {
            "name": VLLM,
            "urls": [c.url for c in clients],
            "served_model": clients[0].model() if clients else None,
            "vllm_version": clients[0].version() if clients else None,
            "draft_urls": {d.name: d.client.url for d in drafts if isinstance(d, vprofile.RemoteDraft)},
            "exact": list(vprofile.EXACT),
            "not_recorded": list(vprofile.NOT_RECORDED),
        },
    }


@dataclass(frozen=True)
class VllmProfileResult:
    """What `profile --engine vllm` shows: the report's summary and the lines to print after it."""

    summary: pd.DataFrame  # summary.parquet: draft × domain × k
    lines: list[str]


def run(request: ProfileRequest, urls: Sequence[str], draft_urls: Sequence[str], notice: Callable[[str], None],
        progress_bar: Callable[[int], Any]) -> VllmProfileResult:
    """The whole `profile --engine vllm` from the command's checked flags (`commands.profile.ProfileRequest`)."""
    if not urls:
        raise SpecprofError("--engine vllm: give the target's vLLM server with --url URL (repeatable)")
    if parse_batch_sizes(request.concurrency):
        raise SpecprofError("--concurrency times forward passes here; --engine vllm measures none (time the target "
                            "where it is served with specprof costs, then recommend --costs FILE)")
    corpus, mode, shard_info = read_corpus(request, notice)
    settings = vprofile.Settings(request.k_max, request.max_new_tokens, request.temperature, request.top_p,
                                 request.seed, request.batch_size or vprofile.DEFAULT_BATCH_SIZE,
                                 request.chat_template)
    options = Options(tuple(urls), tuple(draft_urls), request.target, request.drafts, settings, request.out,
                      request.overwrite, request.resume, request.too_long, mode, request.trust_remote_code,
                      str(request.prompts), request.domains, request.limit)
    summary, lines = profile(options, corpus, shard_info, progress_bar)
    return VllmProfileResult(summary, lines)
