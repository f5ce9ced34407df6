"""Draft kinds behind one small interface: a separate model, the target's early exit, prompt lookup.

DRAFT specs (`--draft`):
  MODEL          a Hugging Face id, local directory or .gguf file sharing the target's tokenizer
  early-exit:L   the target's embeddings, first L decoder layers, final norm and LM head
                 (self-speculative; a view on the target's weights, nothing is copied)
  ngram[:N]      prompt lookup with n-grams of size N down to 1 (default N = 3), model-free
  vllm-ngram[:MIN:MAX]  vLLM's n-gram proposer (its defaults 5:5), model-free
  prompt-lookup[:M]     transformers' prompt lookup (max_matching_ngram_size M, default 2), model-free
  eagle3:DIR     an EAGLE-3 head (EAGLE/SpecForge or speculators layout; a bare DIR is recognised by its
                 config), reading the target's hidden states (`eagle3`, simulated per block start)

The kinds, their parsing and their proposal classes are `core.simulation.kinds`'s; this module
builds the torch objects. Prefix-determined kinds give their exact trace in one teacher-forced pass;
the engines' prompt lookups (`BlockDraft`) propose per block: they are simulated from every block
start (`core.blockdraft`). A model draft (`ModelDraft`, early exits included) gives logits;
`NgramDraft` and `BlockDraft` give token proposals.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from specprof.core.simulation import blockdraft, headspec, kinds, ngram
from specprof.core.vocabulary import EARLY_EXIT, MODEL, NGRAM, VLLM_NGRAM
from specprof.engines.hf.eagle3 import HeadDraft
from specprof.engines.hf.models import LoadedModel, check_same_vocab, config_num_layers, eos_token_ids, load_model
from specprof.errors import SpecprofError

DEFAULT_EXIT_DEPTH = 0.87  # of the target's layers: deep enough to agree often (SmolLM2: 26 of 30, α ≈ 0.46)


def default_specs(num_layers: int) -> list[str]:
    """The drafts profiled when none is given, the ones an engine can run: vLLM's n-gram proposer, and
    an early exit when the target has depth (in vLLM a model directory of the target's first L layers,
    `specprof export-draft`)."""
    specs = [VLLM_NGRAM]
    if num_layers >= 2:
        specs.append(f"{EARLY_EXIT}:{min(max(round(num_layers * DEFAULT_EXIT_DEPTH), 1), num_layers - 1)}")
    return specs


@dataclass
class ModelDraft:
    name: str
    kind: str  # a prefix-determined model kind: MODEL or EARLY_EXIT
    model: torch.nn.Module
    info: dict  # what run.json records about it
    layers: int | None = None  # early exit: how many of the target's layers it runs

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int) -> torch.Tensor:
        """Teacher-forced logits [B, keep, V] at the last `keep` positions of the (left-padded) input."""
        from specprof.engines.hf.generation import position_ids

        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            use_cache=False,
            logits_to_keep=keep,
        )
        return out.logits

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Early exit: logits from the target's own hidden state after `layers` layers ([..., H] → [..., V])."""
        return self.model.lm_head(self.model.model.norm(hidden))


@dataclass
class NgramDraft:
    name: str
    max_ngram: int
    kind: str = NGRAM

    @property
    def info(self) -> dict:
        return {"name": self.name, "kind": self.kind, "max_ngram": self.max_ngram}

    def proposals(self, tokens: list[int], start: int) -> list[int]:
        """Proposal for each tokens[t], t ≥ start, given tokens[:t] (-1: none)."""
        return ngram.propose_all(tokens, start, self.max_ngram).tolist()


@dataclass
class BlockDraft:
    """An engine's prompt lookup (`core.blockdraft`): proposals depend on where the block starts."""

    name: str
    proposer: blockdraft.BlockProposer

    @property
    def kind(self) -> str:
        return self.proposer.kind

    @property
    def info(self) -> dict:
        return kinds.describe_proposer(self.name, self.proposer)

    def proposals_every_start(self, tokens: list[int], start: int, k_max: int) -> list[list[int]]:
        """What a block starting at each t ≥ start proposes with k_max tokens, given tokens[:t]."""
        return self.proposer.propose_every_start(tokens, start, k_max)


Draft = ModelDraft | NgramDraft | BlockDraft | HeadDraft


def load_draft(
    spec: str,
    target: LoadedModel,
    device: torch.device,
    dtype: torch.dtype,
    *,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> Draft:
    parsed = kinds.parse(spec)
    proposer = parsed.kind.proposer(parsed, eos_token_ids(target))
    if proposer is not None:
        return BlockDraft(spec, proposer)
    if parsed.kind.proposal is kinds.Proposal.HEAD:  # reads the target's hidden states
        from specprof.engines.hf.eagle3 import load_head

        return load_head(headspec.directory_of(spec), target, spec)
    if parsed.kind.proposal is not kinds.Proposal.PREFIX:
        raise SpecprofError(f"--draft {spec}: the transformers engine cannot build a {parsed.kind.name} draft yet")
    if parsed.kind.name == NGRAM:
        return NgramDraft(spec, parsed.value)
    if parsed.kind.name == EARLY_EXIT:
        layers, value = target.num_layers, parsed.value
        kinds.check_early_exit(spec, value, layers)
        view = early_exit_view(target.model, value)
        info = {"name": spec, "kind": EARLY_EXIT, "layers": value, "of_layers": layers}
        return ModelDraft(spec, EARLY_EXIT, view, info, layers=value)
    loaded = load_model(
        spec, device, dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, role="--draft"
    )
    check_same_vocab(target, loaded)
    return ModelDraft(spec, MODEL, loaded.model, {"kind": MODEL, **loaded.describe()})


def decoder_parts(model: torch.nn.Module) -> torch.nn.Module:
    """The inner decoder (`model.model`) of a Llama-style causal LM, or a clear error."""
    inner = getattr(model, "model", None)
    if not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm")) or not hasattr(model, "lm_head"):
        arch = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
        raise SpecprofError(
            f"early-exit drafts need a Llama-style decoder (model.layers, model.norm, lm_head); {arch} is not one"
        )
    return inner


def decoder_shell(target: torch.nn.Module, layer_indices: Sequence[int], layers: Sequence[torch.nn.Module],
                  norm: torch.nn.Module, rotary: torch.nn.Module | None = None,
                  what: str = "draft") -> torch.nn.Module:
    """A causal LM of the target's own class whose decoder runs `layers` (taken from the target's
    `layer_indices`, for per-layer settings such as sliding windows), with the target's embeddings
    and LM head.

    Built on the meta device and then pointed at the given modules, so it costs no memory and the
    shared parts stay the target's own tensors (same dtype, device, rotary tables). Early-exit views
    and distilled drafts are both such shells.
    """
    inner = decoder_parts(target)
    config = copy.deepcopy(target.config)
    text_config = config.get_text_config()
    text_config.num_hidden_layers = len(layers)
    if isinstance(getattr(text_config, "layer_types", None), list):
        text_config.layer_types = [text_config.layer_types[i] for i in layer_indices]
    with torch.device("meta"):
        shell = type(target)(config)
    shell.model.embed_tokens = inner.embed_tokens
    shell.model.layers = torch.nn.ModuleList(list(layers))
    shell.model.norm = norm
    if hasattr(inner, "rotary_emb"):
        shell.model.rotary_emb = rotary if rotary is not None else inner.rotary_emb
    shell.lm_head = target.lm_head
    leftover = [n for n, t in [*shell.named_parameters(), *shell.named_buffers()] if t.is_meta]
    if leftover:
        raise SpecprofError(f"{what} of {type(target).__name__}: unset tensor {leftover[0]}")
    shell.generation_config = copy.deepcopy(target.generation_config)
    return shell


def early_exit_view(model: torch.nn.Module, layers: int) -> torch.nn.Module:
    """A causal LM of the target's class running its first `layers` layers, sharing every weight."""
    inner = decoder_parts(model)
    return decoder_shell(model, range(layers), list(inner.layers)[:layers], inner.norm, what="early-exit view").eval()


def check_specs(specs: Sequence[str], target: str | None, trust_remote_code: bool) -> None:
    """Every --draft spec is valid, and every early exit fits the target's depth, before weights load."""
    from specprof.engines.hf.eagle3_load import read_config

    parsed = [kinds.parse(s) for s in specs]
    for p in parsed:
        if p.kind.proposal is kinds.Proposal.HEAD:
            read_config(headspec.directory_of(p.spec))  # neither layout: one line before any weights load
    exits = [(p.spec, p.value) for p in parsed if p.kind.name == EARLY_EXIT]
    target_layers = config_num_layers(target, trust_remote_code) if exits else None
    if target_layers is not None:
        for spec, value in exits:
            kinds.check_early_exit(spec, value, target_layers)


def load_target_and_drafts(target: str | None, specs: Sequence[str], device: torch.device, dtype: torch.dtype,
                           trust_remote_code: bool, allow_pickle: bool) -> tuple[LoadedModel, list[Draft]]:
    """The target and its drafts (the default drafts when none are given)."""
    loaded_target = load_model(target, device, dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    specs = list(specs) or default_specs(loaded_target.num_layers)
    loaded = [load_draft(s, loaded_target, device, dtype, trust_remote_code=trust_remote_code,
                         allow_pickle=allow_pickle) for s in specs]
    return loaded_target, loaded
