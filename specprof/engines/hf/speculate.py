"""A real speculative-decoding loop with KV caches, batch size 1: greedy and speculative sampling.

Each iteration (`speculative_generate`): the draft proposes up to k tokens one at a time; the
target scores the pending token plus all proposals in one cached forward; the accepted prefix and
one more target token are appended; both KV caches are cropped back past the rejected positions
(the prefix is never recomputed).

  greedy (T = 0)   accept the longest prefix of proposals equal to the target's argmax, then the
                   target's own next token (the bonus token).
  sampling (T > 0) Leviathan et al. 2023 (arXiv 2211.17192) / Chen et al. 2023 (arXiv 2302.01318):
                   accept draft token x with probability min(1, target_probs(x) / draft_probs(x));
                   at the first rejection sample from norm(max(0, target_probs − draft_probs)); when
                   all are accepted sample the bonus token from the target. The output is distributed
                   exactly as the target's own samples.

Probabilities go through `sampling.probabilities`, the profiler's temperature/top-p processing.
Draft kinds: a model draft (an early-exit view included: it shares the target's weights but keeps
its own cache) samples or takes the argmax of its own distribution; `ngram` proposes without
probabilities, so its draft distribution is a point mass (accept x with probability
target_probs(x); on rejection sample the target with x removed). An n-gram draft of k tokens is k
lookups on the growing context, the semantics that keep the profile exact.

Confidence threshold (`confidence_threshold` τ, optional): a model draft stops proposing after a
proposal whose probability under the draft (greedy: its top-1 probability; sampling: the sampled
token's) is below τ, as transformers' `assistant_confidence_threshold` does with a fixed τ; the
low-confidence token is still proposed. An n-gram draft has no probabilities and ignores τ. This is
the loop `policy` simulates from a report.

Both caches are prefilled with the prompt minus its last token, which stays pending: the first
iteration verifies [last prompt token, proposals…], so iterations are counted exactly as the
profile's blocks and transformers' assisted generation count target forward passes, and every
iteration (the first included) has the same shape. `autoregressive_generate`, the target alone,
prefills the same way and then feeds one token per step, so the decode phases of the two compare
like with like: the empirical cost model prices exactly those (docs/design.md §2). Both record the
walltime of their prefill and decode phases (CUDA synchronised at the boundaries).

What this module does not do: compare with a report (`verify`), batching.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from specprof.core.simulation import blockdraft, ngram
from specprof.engines.hf import sampling
from specprof.engines.hf.drafts import BlockDraft, Draft, HeadDraft, ModelDraft
from specprof.engines.hf.eagle3_speculate import HeadProposer
from specprof.engines.hf.models import clock


@dataclass(frozen=True)
class Iteration:
    start: int  # position in the continuation of the first proposal
    budget: int  # draft tokens asked for: k, fewer near max_new_tokens
    proposals: tuple[int, ...]  # what the draft proposed (an n-gram draft may stop short of the budget)
    accepted: int  # how many of them the target accepted
    confident_stop: bool = False  # the draft stopped below the budget on its confidence threshold

    @property
    def num_judged_tokens(self) -> int:
        """Draft positions the target judged: the accepted ones plus the first rejection (a missing
        n-gram proposal is a rejection; a stop on the confidence threshold is not), so
        Σ accepted / Σ tested estimates α."""
        asked = len(self.proposals) if self.confident_stop else self.budget
        return self.accepted + (self.accepted < asked)


@dataclass
class SpecOutput:
    tokens: list[int]  # the continuation, EOS included
    iterations: list[Iteration] = field(default_factory=list)  # the target alone: one per token, budget 0
    prefill_s: float = 0.0  # walltime to fill the caches with all but the last prompt token
    decode_s: float = 0.0  # walltime of the iterations

    @property
    def n_iterations(self) -> int:
        """Target forward passes after prefill (one per iteration)."""
        return len(self.iterations)

    @property
    def accepted(self) -> int:
        return sum(it.accepted for it in self.iterations)

    @property
    def drafted(self) -> int:
        return sum(len(it.proposals) for it in self.iterations)

    @property
    def num_judged_tokens(self) -> int:
        return sum(it.num_judged_tokens for it in self.iterations)


def _new_cache(model: torch.nn.Module):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _forward(model: torch.nn.Module, cache, ids: torch.Tensor, keep: int) -> torch.Tensor:
    """Logits [keep, V] at the last `keep` positions of `ids` ([n] tokens appended to `cache`)."""
    return model(input_ids=ids[None, :], cache=cache, use_cache=True, logits_to_keep=keep).logits[0]


def _prefill(model: torch.nn.Module, prompt: Sequence[int]):
    """A new cache holding all but the last prompt token (that one is fed by the first iteration)."""
    cache = _new_cache(model)
    if len(prompt) > 1:
        _forward(model, cache, torch.tensor(list(prompt[:-1]), device=next(model.parameters()).device), keep=1)
    return cache


class ModelProposer:
    """A draft model with its own KV cache: catches up on new context, then k cached steps."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.device = next(model.parameters()).device
        self.cache, self.cached = None, 0

    def start(self, prompt: Sequence[int]) -> None:
        self.cache, self.cached = _prefill(self.model, prompt), len(prompt) - 1

    def propose(self, context: list[int], k: int, temperature: float, top_p: float,
                generator: torch.Generator | None,
                confidence_threshold: float | None = None) -> tuple[list[int], torch.Tensor | None]:
        """Up to k proposals after `context` (fewer when one falls below `confidence_threshold`), and at
        T > 0 the draft probabilities they were sampled from [n, V]."""
        step = torch.tensor(context[self.cached :], device=self.device)  # 1 token, 2 after a full acceptance
        tokens, probs = [], []
        for _ in range(k):
            logits = _forward(self.model, self.cache, step, keep=1)[-1]
            if temperature == 0:
                token = logits.argmax()
                token_probs = torch.softmax(logits.float(), dim=-1) if confidence_threshold is not None else None
            else:
                probs.append(sampling.probabilities(logits, temperature, top_p))
                token = sampling.sample(probs[-1][None], [generator])[0]
                token_probs = probs[-1]
            tokens.append(token)
            step = token[None]  # the last proposal is never fed: the target verifies it
            if confidence_threshold is not None and float(token_probs[token]) < confidence_threshold:
                break  # after the proposal, as transformers' ConfidenceCriteria: the uncertain token is verified
        self.cached = len(context) + len(tokens) - 1
        return torch.stack(tokens).tolist(), (torch.stack(probs) if probs else None)

    def rollback(self, valid: int) -> None:
        """Keep only the first `valid` tokens of the cache (drop the rejected proposals)."""
        if self.cached > valid:
            self.cache.crop(valid - self.cached)
            self.cached = valid


class NgramProposer:
    """Prompt lookup: k successive `ngram.propose_next` lookups on the growing context, no probabilities."""

    def __init__(self, max_ngram: int):
        self.max_ngram = max_ngram

    def start(self, prompt: Sequence[int]) -> None:
        pass

    def propose(self, context: list[int], k: int, temperature: float, top_p: float,
                generator: torch.Generator | None, confidence_threshold: float | None = None) -> tuple[list[int], None]:
        """Up to k lookups; a lookup has no probability, so `confidence_threshold` does not apply."""
        tokens: list[int] = []
        for _ in range(k):
            token = ngram.propose_next(context + tokens, self.max_ngram)
            if token == ngram.NO_PROPOSAL:  # counts as a rejection: the block ends here
                break
            tokens.append(token)
        return tokens, None

    def rollback(self, valid: int) -> None:
        pass


class BlockLookupProposer:
    """An engine's prompt lookup (`core.blockdraft`): up to k tokens copied in one shot per block."""

    def __init__(self, proposer: blockdraft.BlockProposer):
        self.proposer = proposer

    def start(self, prompt: Sequence[int]) -> None:
        pass

    def propose(self, context: list[int], k: int, temperature: float, top_p: float,
                generator: torch.Generator | None, confidence_threshold: float | None = None) -> tuple[list[int], None]:
        return self.proposer.propose(context, k), None

    def rollback(self, valid: int) -> None:
        pass


Proposer = ModelProposer | NgramProposer | BlockLookupProposer | HeadProposer


def proposer_for(draft: Draft) -> Proposer:
    if isinstance(draft, ModelDraft):
        return ModelProposer(draft.model)
    if isinstance(draft, HeadDraft):
        return HeadProposer(draft)
    if isinstance(draft, BlockDraft):
        return BlockLookupProposer(draft.proposer)
    return NgramProposer(draft.max_ngram)


def accept_greedy(target_logits: torch.Tensor, proposals: list[int]) -> tuple[int, int]:
    """(accepted, next token): the longest prefix equal to the target's argmax, then its next argmax.

    `target_logits` is [n + 1, V]: row i predicts the token after i proposals.
    Example: proposals [5, 7, 9], target argmax [5, 7, 2, 4] → (2, 2).
    """
    choice = target_logits.argmax(dim=-1).tolist()
    accepted = 0
    while accepted < len(proposals) and proposals[accepted] == choice[accepted]:
        accepted += 1
    return accepted, choice[accepted]


def accept_sampled(target_probs: torch.Tensor, draft_probs: torch.Tensor | None, proposals: list[int],
                   generator: torch.Generator) -> tuple[int, int]:
    """(accepted, next token) by speculative sampling; `draft_probs` None means point masses (n-gram).

    `target_probs` is [n + 1, V], `draft_probs` [n, V]. Proposal i is accepted when
    u_i · draft_probs(x_i) < target_probs(x_i), u_i uniform: probability min(1, p/q).
    """
    n = len(proposals)
    if n:
        x = torch.tensor(proposals, device=target_probs.device)
        rows = torch.arange(n, device=target_probs.device)
        p_x = target_probs[rows, x]  # [n]
        q_x = draft_probs[rows, x] if draft_probs is not None else torch.ones_like(p_x)
        u = torch.rand(n, generator=generator).to(target_probs.device)
        rejected = (u * q_x >= p_x).tolist()
        if any(rejected):
            i = rejected.index(True)
            point = torch.nn.functional.one_hot(x[i], target_probs.shape[-1]).float()
            q = draft_probs[i] if draft_probs is not None else point
            residual = (target_probs[i] - q).clamp_min(0.0)
            if residual.sum() <= 0:  # p ≤ q everywhere means p = q: rejection had probability 0 (rounding)
                residual = target_probs[i]
            return i, int(sampling.sample((residual / residual.sum())[None], [generator])[0])
    return n, int(sampling.sample(target_probs[n][None], [generator])[0])


@torch.inference_mode()
def speculative_generate(
    target: torch.nn.Module,
    proposer: Proposer,
    prompt: Sequence[int],
    *,
    k: int,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    confidence_threshold: float | None = None,
) -> SpecOutput:
    """Generate up to `max_new_tokens` tokens after `prompt` by speculative decoding with draft length k
    (with `confidence_threshold` τ: at most k, stopping after a proposal whose draft probability is below τ)."""
    if k < 1 or not prompt:
        raise ValueError(f"need k ≥ 1 and a non-empty prompt (k={k}, {len(prompt)} prompt tokens)")
    device = next(target.parameters()).device
    begin = clock(device)
    proposer.start(prompt)  # first: an EAGLE-3 head hooks the target's prefill
    try:
        return _speculate(target, proposer, prompt, k, max_new_tokens, eos_ids, temperature, top_p, generator,
                          confidence_threshold, begin)
    finally:
        if isinstance(proposer, HeadProposer):
            proposer.stop()


def _speculate(target, proposer, prompt, k, max_new_tokens, eos_ids, temperature, top_p, generator,
               confidence_threshold, begin) -> SpecOutput:
    device = next(target.parameters()).device
    cache = _prefill(target, prompt)
    eos = set(eos_ids)
    context, out = list(prompt), SpecOutput([])
    decode_begin = clock(device)
    while len(out.tokens) < max_new_tokens and not (out.tokens and out.tokens[-1] in eos):
        budget = min(k, max_new_tokens - len(out.tokens) - 1)  # the last token always comes from the target
        proposals, draft_probs = ([], None) if budget == 0 else proposer.propose(
            context, budget, temperature, top_p, generator, confidence_threshold)
        ids = torch.tensor(context[-1:] + proposals, device=device)
        target_logits = _forward(target, cache, ids, keep=len(ids))  # [n + 1, V]: one pass verifies all
        if temperature == 0:
            accepted, bonus = accept_greedy(target_logits, proposals)
        else:
            target_probs = sampling.probabilities(target_logits, temperature, top_p)
            accepted, bonus = accept_sampled(target_probs, draft_probs, proposals, generator)
        cache.crop(accepted - len(proposals))  # roll back the rejected positions; keeps the new pending token out
        proposer.rollback(len(context) + accepted)
        new = proposals[:accepted] + [bonus]
        stop = next((i + 1 for i, t in enumerate(new) if t in eos), len(new))  # nothing after EOS
        confident_stop = confidence_threshold is not None and isinstance(proposer, ModelProposer) and \
            len(proposals) < budget
        out.iterations.append(Iteration(len(out.tokens), budget, tuple(proposals), accepted, confident_stop))
        out.tokens += new[:stop]
        context += new[:stop]
    end = clock(device)
    out.prefill_s, out.decode_s = decode_begin - begin, end - decode_begin
    return out


@torch.inference_mode()
def autoregressive_generate(
    target: torch.nn.Module,
    prompt: Sequence[int],
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> SpecOutput:
    """The target alone, one cached forward per token: the baseline `verify` times speculation against."""
    device = next(target.parameters()).device
    begin = clock(device)
    cache = _prefill(target, prompt)
    eos = set(eos_ids)
    out = SpecOutput([])
    decode_begin = clock(device)
    step = torch.tensor(list(prompt[-1:]), device=device)
    while len(out.tokens) < max_new_tokens and not (out.tokens and out.tokens[-1] in eos):
        logits = _forward(target, cache, step, keep=1)[-1]
        if temperature == 0:
            token = logits.argmax()
        else:
            token = sampling.sample(sampling.probabilities(logits, temperature, top_p)[None], [generator])[0]
        step = token[None]
        out.iterations.append(Iteration(len(out.tokens), 0, (), 0))
        out.tokens.append(int(token))
    end = clock(device)
    out.prefill_s, out.decode_s = decode_begin - begin, end - decode_begin
    return out
