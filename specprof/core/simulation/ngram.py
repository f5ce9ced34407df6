"""Prompt-lookup drafting (model-free): propose what followed the last n-gram the last time it occurred.

For a context c[0..L), try n = max_ngram down to 1: find the most recent earlier occurrence of the
suffix c[L-n..L) that has a token after it, and propose that token. No occurrence at any n means
no proposal (-1), which counts as a rejection.

Each proposal depends only on the token prefix, and a k-token draft is k such lookups on the
growing context (the i-th lookup sees the i−1 tokens drafted before it). That is what keeps
the profiler exact for this draft (docs/design.md §1). vLLM's and transformers' prompt lookup instead
copy k tokens after one match; the proposals agree until the copied run meets a more recent
occurrence of the shifted suffix.

Example: c = [5, 6, 7, 5, 6] with max_ngram 2: the suffix [5, 6] occurred at 0..1, followed by 7,
so the proposal is 7.

The engines' own prompt lookups (`VllmNgram`, `PromptLookup` below) copy up to k tokens after the
EARLIEST earlier occurrence of the longest matching suffix, in one shot. Their k-token proposal is
the first k tokens of their k_max-token proposal (the match does not depend on k), so one
proposal of k_max tokens from each block start serves every k (`blockdraft`).

Pure Python and numpy, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from specprof.core.vocabulary import PROMPT_LOOKUP, VLLM_NGRAM

NO_PROPOSAL = -1


def propose_next(context: Sequence[int], max_ngram: int) -> int:
    """The proposal for the token after `context` (NO_PROPOSAL when no n-gram recurs)."""
    length = len(context)
    for n in range(min(max_ngram, length - 1), 0, -1):
        suffix = list(context[length - n :])
        for end in range(length - 2, n - 2, -1):  # end of an earlier occurrence, followed by context[end + 1]
            if list(context[end - n + 1 : end + 1]) == suffix:
                return int(context[end + 1])
    return NO_PROPOSAL


def propose_all(tokens: Sequence[int], start: int, max_ngram: int) -> np.ndarray:
    """`propose_next(tokens[:t])` for every t in [start, len(tokens)), in one pass.

    Keeps, for each n, the latest end index of every n-gram seen with a token after it, so the
    whole sequence costs O(L · max_ngram) instead of O(L² · max_ngram).
    """
    tokens = [int(t) for t in tokens]
    latest_end: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_ngram + 1)]
    out = np.full(max(len(tokens) - start, 0), NO_PROPOSAL, dtype=np.int64)
    for t in range(1, len(tokens)):
        end = t - 2  # the n-grams ending here now have a follower, tokens[t - 1], inside the prefix
        for n in range(1, max_ngram + 1):
            if end - n + 1 >= 0:
                latest_end[n][tuple(tokens[end - n + 1 : end + 1])] = end
        if t < start:
            continue
        for n in range(min(max_ngram, t - 1), 0, -1):
            found = latest_end[n].get(tuple(tokens[t - n : t]))
            if found is not None:
                out[t - start] = tokens[found + 1]
                break
    return out


def earliest_followers(tokens: Sequence[int], start: int, min_ngram: int, max_ngram: int) -> np.ndarray:
    """For every t in [start, len(tokens)): where the copy starts for the context tokens[:t], or -1.

    The rule both engines use: the longest suffix n-gram of tokens[:t] with min_ngram ≤ n ≤ max_ngram
    that occurred earlier with a token after it (inside tokens[:t]); of its occurrences the EARLIEST;
    the copy starts right after it. One pass: an n-gram's earliest occurrence never changes once
    seen, so each n keeps a dict n-gram → its first end index (O(L · max_ngram) in all).

    Example: tokens [1, 2, 3, 1, 2, 4, 1, 2], n = 2, t = 8: the suffix [1, 2] occurred at 0..1 and
    3..4; the earliest wins, so the copy starts at 2 (tokens 3, 1, 2, …).
    """
    tokens = [int(t) for t in tokens]
    first_end: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_ngram + 1)]
    out = np.full(max(len(tokens) - start, 0), -1, dtype=np.int64)
    for t in range(1, len(tokens)):
        end = t - 2  # n-grams ending at t - 2 now have their follower, tokens[t - 1], inside the context
        for n in range(min_ngram, max_ngram + 1):
            if end - n + 1 >= 0:
                first_end[n].setdefault(tuple(tokens[end - n + 1 : end + 1]), end)
        if t < start:
            continue
        for n in range(min(max_ngram, t - 1), min_ngram - 1, -1):
            found = first_end[n].get(tuple(tokens[t - n : t]))
            if found is not None:
                out[t - start] = found + 1
                break
    return out


@dataclass(frozen=True)
class VllmNgram:
    """vLLM's n-gram proposer (v1 `NgramProposer`, checked in vLLM 0.32.0's ngram_proposer.py).

    The longest suffix n-gram of the context with min_ngram ≤ n ≤ max_ngram that occurred earlier,
    its earliest occurrence, and up to k tokens that followed it, copied in one shot (fewer when the
    context ends first; none when nothing matches). vLLM's defaults (prompt_lookup_min/max unset):
    5 and 5; one of them set: the other takes its value.

    Example, min 1 max 3, context [7, 8, 9, 7, 8, 5, 7, 8], k 3: [9, 7, 8] never recurs, [7, 8]
    occurred at 0..1 and 3..4; the earliest is followed by 9, 7, 8 → proposal [9, 7, 8].
    """

    min_ngram: int = 5
    max_ngram: int = 5
    kind = VLLM_NGRAM

    def propose(self, context: Sequence[int], k: int) -> list[int]:
        """Up to k tokens after `context`: the rule read directly (`propose_every_start` is the fast one)."""
        length = len(context)
        for n in range(min(self.max_ngram, length - 1), self.min_ngram - 1, -1):
            suffix = list(context[length - n :])
            for end in range(n - 1, length - 1):  # earliest first; end ≤ length - 2 leaves a follower
                if list(context[end - n + 1 : end + 1]) == suffix:
                    return [int(t) for t in context[end + 1 : min(end + 1 + k, length)]]
        return []

    def propose_every_start(self, tokens: Sequence[int], start: int, k_max: int) -> list[list[int]]:
        """`propose(tokens[:t], k_max)` for every t in [start, len(tokens)), in one pass."""
        tokens = [int(t) for t in tokens]
        follow = earliest_followers(tokens, start, self.min_ngram, self.max_ngram)
        return [tokens[f : min(f + k_max, start + i)] if f >= 0 else [] for i, f in enumerate(follow.tolist())]


@dataclass(frozen=True)
class PromptLookup:
    """transformers' prompt lookup (`PromptLookupCandidateGenerator`, checked in transformers 5.24):
    generate(prompt_lookup_num_tokens=k, max_matching_ngram_size=max_ngram).

    The same match as vLLM's with n from max_ngram down to 1 (the earliest occurrence with a token
    after it), up to k tokens copied, then cut before the first EOS token: a candidate that starts
    with EOS is empty (transformers does not look for another match then).

    Example, max_ngram 2, EOS 0, context [4, 5, 0, 4, 5], k 3: [4, 5] occurred at 0..1, followed by
    0, 4, 5; cut before the EOS → no proposal.
    """

    max_ngram: int = 2
    eos_ids: tuple[int, ...] = ()
    kind = PROMPT_LOOKUP

    def _cut(self, proposal: list[int]) -> list[int]:
        for i, t in enumerate(proposal):
            if t in self.eos_ids:
                return proposal[:i]
        return proposal

    def propose(self, context: Sequence[int], k: int) -> list[int]:
        return self._cut(VllmNgram(1, self.max_ngram).propose(context, k))

    def propose_every_start(self, tokens: Sequence[int], start: int, k_max: int) -> list[list[int]]:
        return [self._cut(p) for p in VllmNgram(1, self.max_ngram).propose_every_start(tokens, start, k_max)]
