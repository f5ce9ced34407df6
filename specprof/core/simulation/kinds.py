"""The draft kinds: one registry saying, per kind, how a `--draft` value names it, how it proposes, how
each serving engine spells it in a config, and what it costs.

DRAFT specs (`--draft`):
  MODEL          a Hugging Face id, local directory or .gguf file sharing the target's tokenizer
  early-exit:L   the target's embeddings, first L decoder layers, final norm and LM head
  ngram[:N]      prompt lookup with n-grams of size N down to 1 (default N = 3), model-free
  vllm-ngram[:MIN:MAX]  vLLM's n-gram proposer (its defaults 5:5), model-free
  prompt-lookup[:M]     transformers' prompt lookup (max_matching_ngram_size M, default 2), model-free
  eagle3:DIR     an EAGLE-3 head (or a bare DIR whose config.json is a head's, `headspec`)

Three proposal classes (`Proposal`), which decide how a profile records a kind:
  PREFIX  the proposal at t depends on the target prefix alone: one teacher-forced pass gives the
          exact trace (model, early-exit, ngram);
  BLOCK   it depends on where the block starts: simulated from every block start, proposals.parquet
          (`blockdraft`; vllm-ngram, prompt-lookup);
  HEAD    a head reading the target's hidden states (EAGLE-style): also simulated from every block
          start, and it needs the target's hidden states (eagle3: `HeadKind`; the transformers engine builds
          it in engines/hf/eagle3.py, `profile --engine vllm` refuses it).

Adding a kind: a `DraftKind` subclass (its own module when it is more than a few lines) and one
`register(...)` line; docs/draft-kinds.md walks through it. The engines build their objects from
the `ParsedDraft` (engines/hf/drafts.py: torch modules; commands/profile_vllm.py: local proposers).

No torch here; nothing printed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from specprof.core.simulation import headspec
from specprof.core.simulation.ngram import PromptLookup, VllmNgram
from specprof.core.vocabulary import (
    EAGLE3,
    EARLY_EXIT,
    MODEL,
    NGRAM,
    PROMPT_LOOKUP,
    SGLANG,
    VLLM_NGRAM,
    EmitTarget,
)
from specprof.errors import SpecprofError

DEFAULT_NGRAM = 3  # specprof's ngram: n-grams of 3 down to 1
VLLM_DEFAULT_NGRAM = 5  # vLLM 0.32.0 config/speculative.py: prompt_lookup_min = prompt_lookup_max = 5 when unset
TRANSFORMERS_DEFAULT_NGRAM = 2  # transformers: max_matching_ngram_size or 2
VLLM_METHOD_NGRAM = "ngram"  # vLLM's --speculative-config methods
VLLM_METHOD_DRAFT_MODEL = "draft_model"
VLLM_METHOD_EAGLE3 = "eagle3"


class Proposal(Enum):
    PREFIX = "prefix-determined"  # teacher-forced once
    BLOCK = "block-dependent"  # simulated from every block start (proposals.parquet)
    HEAD = "hidden-state head"  # needs the target's hidden states; simulated from every block start

    @property
    def per_block_start(self) -> bool:
        """Simulated from every block start (proposals.parquet), not teacher-forced once."""
        return self is not Proposal.PREFIX


@dataclass(frozen=True)
class ParsedDraft:
    """A `--draft` value read: its kind and its integer arguments (none for a model)."""

    spec: str
    kind: DraftKind
    args: tuple[int, ...] = ()

    @property
    def value(self) -> int | None:
        """The one argument of ngram:N / early-exit:L / prompt-lookup:M (None: none given)."""
        return self.args[0] if self.args else None


@dataclass(frozen=True)
class DraftKind:
    """One kind of draft. Subclasses override what differs from a separate draft model."""

    name: str
    proposal: Proposal
    model_free: bool  # True: proposes without a draft forward pass (costs nothing); False: timed
    vllm_proposer: bool  # vLLM has a proposer that proposes what this kind proposes
    may_propose_nothing: bool = False  # a prefix kind whose lookup can come back empty
    engine_note: str = ""  # why its engine counters are approximate ("": they are exact)

    def parse(self, spec: str, arg: str | None) -> ParsedDraft:
        """`arg`: what follows `name:` in the spec (None: no colon)."""
        return ParsedDraft(spec, self)

    def proposer(self, parsed: ParsedDraft, eos_ids: Sequence[int] = ()) -> Any:
        """A block kind's `blockdraft.BlockProposer` (None for prefix kinds)."""
        return None

    def describe(self, parsed: ParsedDraft) -> dict:
        """What run.json records about a prefix kind's draft beside its name (block kinds: `describe_proposer`)."""
        return {"kind": self.name}

    # --- how engines spell it (recommend --emit) ---
    def model_dir(self, draft: str, info: dict) -> str:
        return str(info.get("source") or info.get("name") or draft)

    def vllm_config(self, draft: str, info: dict, k: int) -> dict[str, Any]:
        return {"method": VLLM_METHOD_DRAFT_MODEL, "model": self.model_dir(draft, info), "num_speculative_tokens": k}

    def sglang_flags(self, draft: str, info: dict, k: int) -> list[str]:
        return ["--speculative-algorithm", "STANDALONE", "--speculative-draft-model-path", self.model_dir(draft, info),
                "--speculative-num-steps", str(k), "--speculative-eagle-topk", "1",
                "--speculative-num-draft-tokens", str(k + 1)]

    def notes(self, draft: str, info: dict, target: str, emit: EmitTarget) -> list[str]:
        """What the user should know beside the pasted config."""
        return []


def _ints(spec: str, arg: str | None, usage: str) -> tuple[int, ...]:
    if not arg:
        return ()
    try:
        return tuple(int(p) for p in arg.split(":"))
    except ValueError:
        raise SpecprofError(f"--draft {spec}: expected {usage}") from None


@dataclass(frozen=True)
class EarlyExitKind(DraftKind):
    def parse(self, spec: str, arg: str | None) -> ParsedDraft:
        try:
            return ParsedDraft(spec, self, (int(arg or ""),))
        except ValueError:
            raise SpecprofError(f"--draft {spec}: expected {self.name}:<integer>") from None

    def model_dir(self, draft: str, info: dict) -> str:
        layers = info.get("layers") or str(draft).partition(":")[2]
        return f"specprof-draft-L{layers}"

    def notes(self, draft: str, info: dict, target: str, emit: EmitTarget) -> list[str]:
        return [f"make the draft model directory first: specprof export-draft {draft} --target {target} "
                f"--out {self.model_dir(draft, info)}"]


@dataclass(frozen=True)
class LookupKind(DraftKind):
    """A model-free n-gram lookup: in an engine's config, its n-gram proposer."""

    bounds_note: str = ""

    def bounds(self, draft: str, info: dict) -> tuple[int, int]:
        return 1, int(info.get("max_ngram", DEFAULT_NGRAM))

    def vllm_config(self, draft: str, info: dict, k: int) -> dict[str, Any]:
        low, high = self.bounds(draft, info)
        return {"method": VLLM_METHOD_NGRAM, "prompt_lookup_min": low, "prompt_lookup_max": high,
                "num_speculative_tokens": k}

    def sglang_flags(self, draft: str, info: dict, k: int) -> list[str]:
        return ["--speculative-algorithm", "NGRAM", "--speculative-num-draft-tokens", str(k + 1)]

    def notes(self, draft: str, info: dict, target: str, emit: EmitTarget) -> list[str]:
        out = [self.bounds_note] if self.bounds_note else []
        if emit == SGLANG:
            out.append("SGLang's NGRAM proposer (CUDA only) is its own rule, not vLLM's: its acceptance will differ")
        return out


@dataclass(frozen=True)
class NgramKind(LookupKind):
    def parse(self, spec: str, arg: str | None) -> ParsedDraft:
        if arg is None:
            return ParsedDraft(spec, self, (DEFAULT_NGRAM,))
        try:
            value = int(arg)
        except ValueError:
            raise SpecprofError(f"--draft {spec}: expected {self.name}:<integer>") from None
        if not 1 <= value <= 16:
            raise SpecprofError(f"--draft {spec}: n-gram size must be between 1 and 16")
        return ParsedDraft(spec, self, (value,))

    def describe(self, parsed: ParsedDraft) -> dict:
        return {"kind": self.name, "max_ngram": parsed.value}


@dataclass(frozen=True)
class VllmNgramKind(LookupKind):
    def parse(self, spec: str, arg: str | None) -> ParsedDraft:
        usage = f"{self.name}, {self.name}:N or {self.name}:MIN:MAX"
        values = _ints(spec, arg, usage)
        if len(values) > 2:
            raise SpecprofError(f"--draft {spec}: expected {usage}")
        low, high = (values * 2)[:2] if values else (VLLM_DEFAULT_NGRAM, VLLM_DEFAULT_NGRAM)
        if not 1 <= low <= high <= 16:
            raise SpecprofError(f"--draft {spec}: need 1 ≤ MIN ≤ MAX ≤ 16")
        return ParsedDraft(spec, self, (low, high))

    def proposer(self, parsed: ParsedDraft, eos_ids: Sequence[int] = ()) -> VllmNgram:
        return VllmNgram(*parsed.args)

    def bounds(self, draft: str, info: dict) -> tuple[int, int]:
        low, high = parse(draft).args
        return low, high


@dataclass(frozen=True)
class PromptLookupKind(LookupKind):
    def parse(self, spec: str, arg: str | None) -> ParsedDraft:
        usage = f"{self.name} or {self.name}:M (max n-gram size)"
        values = _ints(spec, arg, usage)
        if len(values) > 1:
            raise SpecprofError(f"--draft {spec}: expected {usage}")
        size = values[0] if values else TRANSFORMERS_DEFAULT_NGRAM
        if not 1 <= size <= 16:
            raise SpecprofError(f"--draft {spec}: the n-gram size must be between 1 and 16")
        return ParsedDraft(spec, self, (size,))

    def proposer(self, parsed: ParsedDraft, eos_ids: Sequence[int] = ()) -> PromptLookup:
        return PromptLookup(parsed.args[0], tuple(int(e) for e in eos_ids))

    def bounds(self, draft: str, info: dict) -> tuple[int, int]:
        return 1, int(info.get("max_matching_ngram_size", TRANSFORMERS_DEFAULT_NGRAM))


@dataclass(frozen=True)
class HeadKind(DraftKind):
    """An EAGLE-3 head: `eagle3:DIR`, or a directory whose config.json is a head's (`headspec`). Parsing
    reads no file; the directory is checked before weights load (`engines/hf/drafts.check_specs`)."""

    def parse(self, spec: str, arg: str | None) -> ParsedDraft:
        if not arg:
            raise SpecprofError(f"--draft {spec}: expected {self.name}:DIR (an EAGLE-3 head directory)")
        return ParsedDraft(spec, self)

    def model_dir(self, draft: str, info: dict) -> str:
        return str(info.get("source") or draft.removeprefix(f"{self.name}:"))

    def vllm_config(self, draft: str, info: dict, k: int) -> dict[str, Any]:
        return {"method": VLLM_METHOD_EAGLE3, "model": self.model_dir(draft, info), "num_speculative_tokens": k}

    def sglang_flags(self, draft: str, info: dict, k: int) -> list[str]:
        return ["--speculative-algorithm", "EAGLE3", "--speculative-draft-model-path", self.model_dir(draft, info),
                "--speculative-num-steps", str(k), "--speculative-eagle-topk", "1",
                "--speculative-num-draft-tokens", str(k + 1)]

    def notes(self, draft: str, info: dict, target: str, emit: EmitTarget) -> list[str]:
        out = [f"the head reads the target's hidden states: serve it with the target it was profiled with ({target})"]
        if emit == SGLANG:
            out.append("SGLang's EAGLE3 is its own implementation: specprof compared its counters with vLLM's only")
        return out


KINDS: dict[str, DraftKind] = {}


def register(kind: DraftKind) -> DraftKind:
    """Add a kind to the registry (its name must be new)."""
    if kind.name in KINDS:
        raise ValueError(f"draft kind {kind.name!r} registered twice")
    KINDS[kind.name] = kind
    return kind


OWN_NGRAM_NOTE = (
    "specprof's ngram rule (k lookups on the growing context) is no engine's proposer; "
    "profile --draft vllm-ngram to predict vLLM's n-gram counters"
)
register(DraftKind(MODEL, Proposal.PREFIX, model_free=False, vllm_proposer=True))
register(EarlyExitKind(EARLY_EXIT, Proposal.PREFIX, model_free=False, vllm_proposer=True))
register(NgramKind(NGRAM, Proposal.PREFIX, model_free=True, vllm_proposer=False, may_propose_nothing=True,
                   engine_note=OWN_NGRAM_NOTE,
                   bounds_note="specprof's ngram rule is not the engine's n-gram proposer: profile vllm-ngram to "
                               "check its figures"))
register(VllmNgramKind(VLLM_NGRAM, Proposal.BLOCK, model_free=True, vllm_proposer=True))
register(PromptLookupKind(PROMPT_LOOKUP, Proposal.BLOCK, model_free=True, vllm_proposer=False,
                          bounds_note="transformers' prompt lookup cuts proposals before EOS and vLLM's does not: "
                                      "profile vllm-ngram to check its figures"))
register(HeadKind(EAGLE3, Proposal.HEAD, model_free=False, vllm_proposer=True))


def kind(name: str | None) -> DraftKind:
    """The registered kind run.json names (a draft recorded without a kind is a model)."""
    found = KINDS.get(name or MODEL)
    if found is None:
        raise SpecprofError(f"draft kind {name!r}: unknown to this specprof (known: {', '.join(KINDS)})")
    return found


def of_class(*proposals: Proposal) -> tuple[str, ...]:
    """The names of the registered kinds that propose in one of these ways."""
    return tuple(k.name for k in KINDS.values() if k.proposal in proposals)


def usage() -> str:
    return "use a model, early-exit:L, ngram[:N], vllm-ngram[:MIN:MAX], prompt-lookup[:M] or eagle3:DIR"


def parse(spec: str) -> ParsedDraft:
    """The kind and arguments of a --draft value, or a clear error. Anything that names no kind is a model
    (a directory, hub id or .gguf), unless it looks like `word:…` and is no existing path, or is a directory
    whose config.json is an EAGLE-3 head's (`headspec.head_directory`)."""
    head, sep, arg = spec.partition(":")
    named = KINDS.get(head)
    if named is not None and named.name != MODEL:
        return named.parse(spec, arg if sep else None)
    looks_like_kind = sep and not head.endswith(".gguf") and not re.search(r"[/\\]", head) and len(head) > 1
    if looks_like_kind and not Path(spec).exists():
        raise SpecprofError(f"--draft {spec}: unknown draft kind {head!r} ({usage()})")
    if headspec.head_directory(spec) is not None:
        return ParsedDraft(spec, KINDS[EAGLE3])
    return ParsedDraft(spec, KINDS[MODEL])


def check_early_exit(spec: str, layers: int | None, target_layers: int) -> None:
    """An early exit runs the target's first L layers: 1 ≤ L < the target's depth."""
    if layers is None or not 1 <= layers < target_layers:
        raise SpecprofError(
            f"--draft {spec}: L must be between 1 and {target_layers - 1} (the target has {target_layers} layers)"
        )


def block_proposer(spec: str, eos_ids: Sequence[int] = ()) -> Any:
    """The `blockdraft.BlockProposer` a --draft value names, None when it is not simulated per block start."""
    parsed = parse(spec)
    return parsed.kind.proposer(parsed, eos_ids)


def describe_proposer(name: str, proposer: Any) -> dict:
    """What run.json records about a block-dependent draft (enough to rebuild it)."""
    if isinstance(proposer, VllmNgram):
        return {"name": name, "kind": VLLM_NGRAM, "prompt_lookup_min": proposer.min_ngram,
                "prompt_lookup_max": proposer.max_ngram}
    if isinstance(proposer, PromptLookup):
        return {"name": name, "kind": PROMPT_LOOKUP, "max_matching_ngram_size": proposer.max_ngram,
                "eos_ids": list(proposer.eos_ids)}
    return {"name": name, "kind": proposer.kind}
