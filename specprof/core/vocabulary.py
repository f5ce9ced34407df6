"""The names every layer shares: the whole-corpus domain, the engines, the draft kinds. Constants only.

What a draft kind does (how it is parsed, proposes, is spelled in an engine's config, costs) is in
`core/simulation/kinds.py`, the registry; the figures' definitions in `core/glossary.py`. Outside
these two modules and the CLI option declarations no module spells an engine or a kind as a string
literal (tests/test_vocabulary.py).
"""

from __future__ import annotations

from typing import Literal

ALL = "ALL"  # the domain that stands for the whole corpus

# The engines: where the target's passes run and whose counting conventions a figure follows.
Engine = Literal["transformers", "vllm"]
TRANSFORMERS: Engine = "transformers"
VLLM: Engine = "vllm"
ENGINES: tuple[Engine, ...] = (TRANSFORMERS, VLLM)
ENGINE_ALIASES: dict[str, Engine] = {"hf": TRANSFORMERS}  # accepted on the command line

# The serving engines whose config `recommend --emit` writes (SGLang: flags only, no counters).
EmitTarget = Literal["vllm", "sglang"]
SGLANG: EmitTarget = "sglang"
EMIT_TARGETS: tuple[EmitTarget, ...] = (VLLM, SGLANG)
# The settings `recommend --emit` writes to benchmark a serving engine at a report's acceptance (synthetic acceptance).
SyntheticTarget = Literal["vllm-synthetic", "sglang-synthetic", "trtllm-synthetic"]
VLLM_SYNTHETIC: SyntheticTarget = "vllm-synthetic"
SGLANG_SYNTHETIC: SyntheticTarget = "sglang-synthetic"
TRTLLM_SYNTHETIC: SyntheticTarget = "trtllm-synthetic"
SYNTHETIC_TARGETS: tuple[SyntheticTarget, ...] = (VLLM_SYNTHETIC, SGLANG_SYNTHETIC, TRTLLM_SYNTHETIC)

# The draft kinds, as run.json records them (`kinds.py` says what each one is).
MODEL = "model"  # a separate model (a directory, hub id or .gguf)
EARLY_EXIT = "early-exit"  # the target's first L layers
NGRAM = "ngram"  # specprof's own prompt lookup
VLLM_NGRAM = "vllm-ngram"  # vLLM's n-gram proposer
PROMPT_LOOKUP = "prompt-lookup"  # transformers' prompt lookup
EAGLE3 = "eagle3"  # an EAGLE-3 head reading the target's hidden states

# vLLM's draft_sample_method: how a model draft proposes at T > 0 (docs/sampling.md).
DraftSampling = Literal["greedy", "probabilistic"]
GREEDY: DraftSampling = "greedy"  # the draft's argmax, accepted with the target's probability (vLLM's default)
PROBABILISTIC: DraftSampling = "probabilistic"  # sampled from the draft, accepted with min(1, p / q)
DRAFT_SAMPLING: tuple[DraftSampling, ...] = (GREEDY, PROBABILISTIC)


def engine_named(name: str) -> Engine | None:
    """The engine a command-line value names (`hf` is `transformers`), None when it names none."""
    name = ENGINE_ALIASES.get(name, name)
    return name if name in ENGINES else None  # type: ignore[return-value]
