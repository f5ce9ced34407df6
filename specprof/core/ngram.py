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

Pure Python and numpy, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
