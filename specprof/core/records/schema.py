"""The report's table schemas and version (docs/design.md §3): the contract other tools read.

Columns and their meaning, for every draft × prompt × position in `tokens.parquet`:
  target_token   the target's token at this position of its continuation
  draft_token    the draft's proposal given the target prefix (argmax at T = 0; -1: no proposal)
  match          draft_token == target_token
  accept_prob    β = Σ_v min(p(v), q(v)) after identical temperature/top-p processing (= match at T = 0)
  target_p       target probability of its own token
  draft_q        draft probability of the target's token
  target_entropy entropy of the target distribution, in nats
  draft_top1_p   the draft's highest probability (for confidence-threshold drafting)
At T = 0 the probabilities are the plain softmax of the logits; at T > 0 they are taken after the
run's temperature and top-p processing. `prompts.parquet` is specprof's own addition: one row per
prompt with what `verify` and `inspect` need to replay it.

Schema 2 adds two tables; every figure of schema 1 keeps its meaning and its rows:
  past_end.parquet   the tokens.parquet columns for up to k_max positions PAST the end of each
                     continuation (the target's greedy tokens after EOS / max_new_tokens, and the
                     drafts' proposals there). Engines count acceptances there (`conventions`);
                     nothing else reads them: not α, not the blocks, not the continuation.
  proposals.parquet  block-dependent drafts only (`blockdraft`): what the proposer proposes, with
                     k_max tokens, from a block starting at each position of the continuation.
Readers accept schema 1 reports, which lack both (`conventions` says what that leaves inexact).

Schema 3 adds three tokens/past_end columns for vLLM's sampled acceptance
(`core/simulation/sampled_conventions`); nothing else changes:
  proposal_target_p        the target's processed probability of draft_token (= match at T = 0)
  draft_q_untruncated      the draft's probability of the target's token at the temperature alone
                           (no top-p: vLLM's probabilistic draft)
  accept_prob_untruncated  Σ_v min(p(v), q(v)) with top-p on the target only (= match at T = 0)
Readers accept schema 1 and 2 files without them (`ADDED_IN_3`).

No torch here; the parquet files open with plain pandas and pyarrow.
"""

from __future__ import annotations

import pyarrow as pa

from specprof.errors import SpecprofError

SCHEMA_VERSION = 3  # 2: past_end.parquet and proposals.parquet added; 3: the sampled-acceptance columns
VERSION_KEY = b"specprof.schema_version"

TOKENS = pa.schema(
    [
        ("draft", pa.string()),
        ("prompt_id", pa.string()),
        ("domain", pa.string()),
        ("position", pa.int32()),
        ("target_token", pa.int32()),
        ("draft_token", pa.int32()),
        ("match", pa.bool_()),
        ("accept_prob", pa.float32()),
        ("target_p", pa.float32()),
        ("draft_q", pa.float32()),
        ("target_entropy", pa.float32()),
        ("draft_top1_p", pa.float32()),
        ("proposal_target_p", pa.float32()),
        ("draft_q_untruncated", pa.float32()),
        ("accept_prob_untruncated", pa.float32()),
    ]
)
ADDED_IN_3 = ("proposal_target_p", "draft_q_untruncated", "accept_prob_untruncated")  # absent before schema 3

SUMMARY = pa.schema(
    [
        ("draft", pa.string()),
        ("domain", pa.string()),  # a corpus domain, or "ALL" for the whole corpus
        ("k", pa.int32()),
        ("n_prompts", pa.int32()),
        ("n_tokens", pa.int64()),
        ("alpha", pa.float64()),  # mean accept_prob over the domain's tokens
        ("alpha_lo", pa.float64()),
        ("alpha_hi", pa.float64()),
        ("tokens_per_iter", pa.float64()),  # mean acceptance length: emitted tokens / iterations, bonus included
        ("draft_acceptance_rate", pa.float64()),  # vLLM's: accepted / drafted, drafted = k per iteration
        ("speedup_iid", pa.float64()),  # Leviathan et al. i.i.d. model at this alpha, k and cost_ratio
        ("speedup", pa.float64()),  # empirical: measured tokens_per_iter and measured forward times
        ("speedup_lo", pa.float64()),
        ("speedup_hi", pa.float64()),
        ("cost_ratio", pa.float64()),  # c = draft step time / target step time
        ("decision", pa.string()),  # GO / NO-GO / INCONCLUSIVE
    ]
)

BLOCKS = pa.schema(
    [
        ("draft", pa.string()),
        ("domain", pa.string()),
        ("k", pa.int32()),
        ("accepted", pa.int32()),  # 0..k draft tokens accepted in one iteration
        ("iterations", pa.float64()),  # how many iterations accepted exactly that many (expected at T > 0)
    ]
)

PROMPTS = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("domain", pa.string()),
        ("prompt", pa.string()),  # null for chat prompts
        ("messages", pa.string()),  # JSON list of {role, content}; null for plain prompts
        ("prompt_tokens", pa.list_(pa.int32())),  # what the target saw, chat template applied
        ("n_generated", pa.int32()),
        ("finish_reason", pa.string()),  # "eos" or "length"
        ("min_margin", pa.float32()),  # smallest top-1 minus top-2 target logit over the continuation
    ]
)

PROPOSALS = pa.schema(
    [
        ("draft", pa.string()),
        ("prompt_id", pa.string()),
        ("position", pa.int32()),  # where the block starts in the continuation
        ("proposal", pa.list_(pa.int32())),  # up to k_max tokens proposed from there (empty: none)
    ]
)

# past_end has the tokens columns: positions n_generated .. n_generated + k_max - 1
TABLES = {"tokens": TOKENS, "summary": SUMMARY, "blocks": BLOCKS, "prompts": PROMPTS, "past_end": TOKENS,
          "proposals": PROPOSALS}
OPTIONAL_TABLES = ("past_end", "proposals")  # absent from schema-1 reports


def with_version(schema: pa.Schema) -> pa.Schema:
    return schema.with_metadata({VERSION_KEY: str(SCHEMA_VERSION).encode()})


def check_version(metadata: dict[bytes, bytes] | None, where: str) -> int:
    """The file's schema version; reject files that are not ours or come from a newer specprof."""
    raw = (metadata or {}).get(VERSION_KEY)
    if raw is None:
        raise SpecprofError(f"{where}: not a specprof report file (no schema version in its metadata)")
    try:
        version = int(raw)
    except ValueError:
        raise SpecprofError(f"{where}: unreadable schema version {raw!r}") from None
    if version > SCHEMA_VERSION:
        raise SpecprofError(
            f"{where}: schema version {version} is newer than this specprof understands "
            f"({SCHEMA_VERSION}); upgrade specprof"
        )
    return version
