"""vLLM's counters at temperature T > 0: their expected values, from a sampled profile.

At T = 0 `conventions` counts exactly what vLLM counts. At T > 0 the engine's counters are random;
this module gives their expectation for each of vLLM's two `draft_sample_method`s (vLLM 0.32.0):

  greedy (the default)  the draft proposes its argmax x (`llm_base_proposer.py: _greedy_sample`,
                        `_sample_from_logits` when probabilistic draft probs are off) and keeps no
                        draft probabilities, so `rejection_sampler.py: rejection_random_sample_kernel`
                        takes draft_prob = 1: x is accepted when target_prob(x) ≥ u, with probability
                        p_T'(x), the target's probability after the request's temperature, top-p and
                        top-k (`apply_sampling_constraints`). On a rejection the recovered token is
                        drawn from p_T' without x (`sample_recovered_tokens_kernel`, NO_DRAFT_PROBS).
                        Model-free drafts (vLLM's n-gram) always follow this rule.
  probabilistic         the draft samples x from q_T, its softmax at the request's temperature ONLY
                        (`llm_base_proposer.py: compute_probs_and_sample_next_token`: "We only use the
                        temperature"), and x is accepted when p_T'(x) / q_T(x) ≥ u: with probability
                        β'_t = Σ_v min(p_T'(v), q_T(v)) (top-p/top-k on the target, not on the draft).
transformers' assisted generation (`generation/utils.py: _speculative_sampling`) is the classic
speculative sampling of Leviathan et al. 2023 with both distributions processed alike: specprof's
own β = Σ min(p, q) (`accept_prob`); it is not modelled here.

Why the expectation is exact, not the chain Π β of `trace` (the coupling). In both modes every
emitted token is distributed as p_T' given its prefix (an accepted x has P(x, accept) = min(p', q)(x),
the recovered token makes up p' − min(p', q)), so the engine's output is a sample of the target,
like the profile's continuation y. Given y, a position t inside a block is accepted with probability
ρ_t = min(p_T'(y_t), q(y_t)) / p_T'(y_t): for a point-mass draft (greedy, n-gram) that is
1[y_t == proposal], for the probabilistic draft min(1, q_T(y_t) / p_T'(y_t)); and after an
acceptance the draft continues from y, exactly as teacher-forced in the profile. So the engine's
counters are those of blocks over y whose positions are accepted independently with probability
ρ_t, and their expectation given y is one forward pass over the start positions (`expected_counts`).
Averaged over prompts this is an unbiased estimate of the engine's expectation; its spread over
prompts is what the bootstrap interval shows. The accepted-at-position-j term also takes the
expectation of its last factor given the prefix (a_t = p_T'(d_t) greedy, β'_t probabilistic), which
lowers the variance and keeps the estimate unbiased (the prefix decides whether the block got there).

Records needed (schema 3, `tokens.parquet`): `proposal_target_p` = p_T'(d_t), `draft_q_untruncated`
= q_T(y_t), `accept_prob_untruncated` = β'_t. A schema-1/2 report still answers greedy (with the
indicator 1[match] instead of a_t) and, at top-p 1 (where the new columns equal `draft_q` and
`accept_prob`), probabilistic.

What this module does not do: intervals (`core/answers/sampled_plan`), print, run an engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specprof.core.records import reportfiles
from specprof.core.simulation import conventions, kinds
from specprof.core.vocabulary import DRAFT_SAMPLING, GREEDY, MODEL, PROBABILISTIC, VLLM
from specprof.errors import SpecprofError

SAMPLED_COLUMNS = ("proposal_target_p", "draft_q_untruncated", "accept_prob_untruncated")
EXACT_NOTE = (
    "expected counters at T > 0, exact in expectation (the engine's output is a sample of the target, "
    "and the report's continuations are such samples), the interval the spread over prompts"
)


@dataclass(frozen=True)
class SampledRecords:
    """One draft's per-position acceptance figures along the report's sampled continuations."""

    draft: str
    kind: str
    mode: str  # the draft_sample_method these figures follow ("greedy" for model-free drafts)
    prompt_ids: np.ndarray  # [n_prompts] str
    domains: np.ndarray  # [n_prompts] str
    lengths: np.ndarray  # [n_prompts] continuation lengths
    recorded: np.ndarray  # [n_prompts] positions with a record (continuation + past its end)
    keep: np.ndarray  # [n_prompts, width] ρ_t: P(accepted | the target's token there)
    expect: np.ndarray  # [n_prompts, width] a_t: P(accepted | the prefix) = E[ρ_t | y_<t]
    greedy_records: conventions.DraftRecords | None  # model-free drafts: counted as at T = 0 along y
    k_max: int


def load_sampled(report: str | Path | reportfiles.Report, draft: str, mode: str = GREEDY) -> SampledRecords:
    """What the expected counters need about `draft` from a sampled report."""
    if mode not in DRAFT_SAMPLING:
        raise SpecprofError(f"--draft-sampling {mode}: unknown (use greedy or probabilistic)")
    rep = report if isinstance(report, reportfiles.Report) else reportfiles.load_report(report)
    settings = rep.run.get("settings") or {}
    if float(settings.get("temperature", 0.0)) == 0.0:
        raise SpecprofError(f"{rep.directory}: greedy report (T = 0): its engine counters are exact "
                            "(`conventions`), not expected values")
    by_name = {d.get("name"): d.get("kind", MODEL) for d in rep.run.get("drafts") or []}
    kind = by_name.get(draft, MODEL)
    rec = conventions.load_records(rep, draft, sampled=True)
    if kinds.kind(kind).model_free:  # no draft probabilities: always vLLM's greedy rule
        zero = np.zeros_like(rec.match, dtype=np.float64)
        return SampledRecords(draft, kind, GREEDY, rec.prompt_ids, rec.domains, rec.lengths, rec.recorded,
                              zero, zero, rec, rec.k_max)
    keep, expect = _acceptance(rep, draft, rec, mode, float(settings.get("top_p", 1.0)))
    return SampledRecords(draft, kind, mode, rec.prompt_ids, rec.domains, rec.lengths, rec.recorded,
                          keep, expect, None, rec.k_max)


def _acceptance(rep: reportfiles.Report, draft: str, rec: conventions.DraftRecords, mode: str,
                top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """ρ and a on the records' [n_prompts, width] grid (continuation, then past the end)."""
    import pyarrow.parquet as pq

    have = set(pq.ParquetFile(rep.path("tokens")).schema_arrow.names)
    new = all(c in have for c in SAMPLED_COLUMNS)
    if mode == PROBABILISTIC and not new and top_p < 1.0:
        raise SpecprofError(
            f"{rep.directory}: --draft-sampling probabilistic at top-p {top_p} needs the draft's probabilities "
            "without top-p (schema 3); re-profile with this specprof"
        )
    base = ["prompt_id", "position", "match", "target_p", "draft_q", "accept_prob"]
    columns = base + (list(SAMPLED_COLUMNS) if new else [])
    frames = [rep.frame("tokens", columns + ["draft"])]
    if rep.path("past_end").exists():
        frames.append(rep.frame("past_end", columns + ["draft"]))
    index = {p: i for i, p in enumerate(rec.prompt_ids.tolist())}
    keep = np.zeros(rec.match.shape, dtype=np.float64)
    expect = np.zeros(rec.match.shape, dtype=np.float64)
    for frame in frames:
        rows = frame[frame["draft"] == draft]
        row = rows["prompt_id"].astype(str).map(index)
        pos = rows["position"].to_numpy(np.int64)
        ok = row.notna().to_numpy() & (pos < rec.match.shape[1])
        r, c = row[ok].to_numpy(np.int64), pos[ok]
        take = {name: rows[name].to_numpy(np.float64)[ok] for name in columns[2:]}
        if mode == GREEDY:
            keep[r, c] = take["match"]
            expect[r, c] = take["proposal_target_p"] if new else take["match"]
        else:
            draft_q = take["draft_q_untruncated"] if new else take["draft_q"]
            with np.errstate(divide="ignore", invalid="ignore"):
                keep[r, c] = np.where(take["target_p"] > 0, np.minimum(1.0, draft_q / take["target_p"]), 0.0)
            expect[r, c] = take["accept_prob_untruncated"] if new else take["accept_prob"]
    return keep, expect


def expected_counts(keep: np.ndarray, expect: np.ndarray, lengths: np.ndarray, recorded: np.ndarray,
                    k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt [n_prompts, 3 + k] expected num_drafts, num_draft_tokens, num_accepted_tokens and
    accepted per position, counted as vLLM counts (blocks from position 1, acceptances past the end
    included); and [n_prompts] bool: some block may reach past the recorded positions.

    One pass over the start positions carries P(a block starts at s): from a start s the block
    accepts its first j tokens with probability Π_{i<j} ρ_{s+i}, then rejects (next start s+j+1)
    or, after k, emits the bonus token (next start s+k+1).
    Example, k = 2, one prompt of length 4 with ρ = (·, 1, 0.5, ·, ·, ·) and a = ρ: a block starts at 1
    surely; it accepts position 1, then position 2 with probability 0.5 → per position (1, 0.5), next
    start 3 with 0.5 (rejected at 2) or 4 with 0.5 (beyond the end): drafts 1.5.
    """
    n, width = keep.shape
    start = np.zeros((n, width + k + 2))
    start[:, 1] = 1.0
    out = np.zeros((n, 3 + k))
    reach = np.zeros(n)  # probability that some block needs a position past the records
    for s in range(1, int(lengths.max(initial=0))):
        here = np.where(s < lengths, start[:, s], 0.0)
        if not here.any():
            continue
        out[:, 0] += here
        out[:, 1] += here * k
        run = here.copy()  # P(start at s and the first j tokens accepted)
        for j in range(k):
            t = s + j
            inside = t < recorded
            reach += np.where(inside, 0.0, run)
            a = expect[:, t] if t < width else np.zeros(n)
            rho = keep[:, t] if t < width else np.zeros(n)
            out[:, 3 + j] += run * np.where(inside, a, 0.0)
            start[:, t + 1] += run * (1.0 - np.where(inside, rho, 0.0))
            run = run * np.where(inside, rho, 0.0)
        start[:, s + k + 1] += run
    out[:, 2] = out[:, 3:].sum(axis=1)
    return out, reach > 1e-12


def prompt_expected(rec: SampledRecords, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt [n_prompts, 3 + k] expected counters (float) and the past-the-records flag."""
    if not 1 <= k <= rec.k_max:
        raise SpecprofError(f"--k {k}: the report covers k = 1..{rec.k_max}")
    if rec.greedy_records is not None:  # deterministic given y: the T = 0 count along the sample
        table, short = conventions.prompt_counters(rec.greedy_records, k, VLLM)
        return table.astype(np.float64), short
    return expected_counts(rec.keep, rec.expect, rec.lengths, rec.recorded, k)
