"""The per-position figures vLLM's sampled acceptance needs (schema 3), beside scoring's records.

vLLM processes the two distributions differently from specprof's β (`sampling.probabilities` on
both): top-p/top-k apply to the target only, and the draft samples at the temperature alone
(`core/simulation/sampled_conventions`). Three columns let the core predict both of vLLM's
draft-sampling modes:
  proposal_target_p        p_T'(d_t): the target's processed probability of the draft's proposal
                           (vLLM's greedy draft: the proposal's acceptance probability);
  draft_q_untruncated      q_T(y_t): the draft's probability of the target's token, temperature only;
  accept_prob_untruncated  β'_t = Σ_v min(p_T'(v), q_T(v)) (vLLM's probabilistic draft).
At T = 0 the target is its argmax: p_T'(d_t) = β' = match, and q is the plain softmax.

What this module does not do: choose proposals or write rows (`scoring`).
"""

from __future__ import annotations

import torch

from specprof.engines.hf import sampling


def model_draft_columns(draft_logits: torch.Tensor, target_probs: torch.Tensor | None, proposal: torch.Tensor,
                        target_tokens: torch.Tensor, match: torch.Tensor, draft_q: torch.Tensor,
                        temperature: float) -> dict[str, torch.Tensor]:
    """The three columns for a block of rows of a model draft: `draft_logits` [R, T, V] raw,
    `target_probs` [R, T, V] processed (None at T = 0), `proposal`, `target_tokens` [R, T]."""
    if temperature == 0 or target_probs is None:
        return {"proposal_target_p": match, "draft_q_untruncated": draft_q, "accept_prob_untruncated": match}
    draft_probs = sampling.probabilities(draft_logits, temperature, 1.0)  # temperature only, as vLLM's draft
    return {
        "proposal_target_p": target_probs.gather(-1, proposal[..., None]).squeeze(-1),
        "draft_q_untruncated": draft_probs.gather(-1, target_tokens[..., None]).squeeze(-1),
        "accept_prob_untruncated": torch.minimum(target_probs, draft_probs).sum(dim=-1).clamp(max=1.0),
    }


def point_mass_columns(accept: torch.Tensor, match: torch.Tensor) -> dict[str, torch.Tensor]:
    """A draft without probabilities (n-gram): its proposal is a point mass, so β' = p_T'(proposal)."""
    return {"proposal_target_p": accept, "draft_q_untruncated": match, "accept_prob_untruncated": accept}
