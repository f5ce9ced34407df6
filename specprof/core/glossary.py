"""The one definition of each figure specprof prints, shared by `--help`, the HTML page and the README.

Each term is defined here once, as plain text (no markup: Rich help, HTML and Markdown all show it
as written). `recommend --help` and `report --html` print these strings; the README's "What it
measures" table holds the same text, and tests/test_glossary.py checks all three against this module.

Indexing: r_i counts draft positions from 1, as the `r_1..r_k` column of `recommend` does:
r_1 = P(the block accepted at least its first proposal), and tokens/iter = 1 + r_1 + … + r_k.

What this module does not do: compute anything (`trace`, `costmodel`), print, import torch.
"""

from __future__ import annotations

ALPHA = (
    "mean per-token acceptance: at T = 0 the fraction of positions where the draft's proposal equals the "
    "target's token; at T > 0 the mean of β = Σ_v min(p(v), q(v)). Does not depend on k."
)
TOKENS_PER_ITER = (
    "mean acceptance length as Spec-Bench and transformers' assisted generation count it: tokens emitted per "
    "target forward pass, accepted draft tokens plus the bonus token (gpt-fast's \"mean accepted\" is this "
    "minus 1). Pooled: Σ emitted / Σ iterations. vLLM's own counters count differently (the first token from "
    "prefill, no draft where its proposer found nothing, acceptances past the end): recommend --engine vllm "
    "predicts them exactly."
)
DRAFT_ACCEPTANCE_RATE = (
    "accepted draft tokens / drafted tokens at that k, k drafted per iteration (vLLM's draft acceptance rate "
    "counts the tokens its proposer returned: recommend --engine vllm). Falls as k grows."
)
PER_POSITION = (
    "per-position acceptance r_i = P(accepted ≥ i) for i = 1..k: the fraction of blocks at draft length k that "
    "accepted at least i draft tokens. AL(k) = 1 + Σ_{i=1..k} r_i is the tokens/iter at k (away from the end "
    "of a continuation)."
)
SPEEDUP = (
    "empirical: measured tokens/iter × t_T(1) / (k·t_D + t_T(k+1) + f_k·t_C), with the target's verification "
    "times t_T(n) (n tokens at once), the draft's step time t_D and its catch-up t_C measured on this machine. "
    "t_C = t_D(2) − t_D(1) is paid after each block that accepted all k proposals (a fraction f_k of blocks): "
    "the draft then feeds 2 tokens in its next step."
)
SPEEDUP_IID = (
    "Leviathan et al.'s i.i.d. model: (1 − α^(k+1)) / (1 − α) / (k·c + 1), c = t_D / t_T(1)."
)

# (name as printed, its JSON/parquet column where there is one, definition), in reading order
TERMS: tuple[tuple[str, str, str], ...] = (
    ("α", "alpha", ALPHA),
    ("tokens/iter", "tokens_per_iter", TOKENS_PER_ITER),
    ("draft acceptance rate", "draft_acceptance_rate", DRAFT_ACCEPTANCE_RATE),
    ("r_i", "per_position_acceptance", PER_POSITION),
    ("speedup", "speedup", SPEEDUP),
    ("i.i.d. speedup", "speedup_iid", SPEEDUP_IID),
)


def help_paragraphs() -> list[str]:
    """One "name: definition" paragraph per term, for a command's --help."""
    return [f"{name}: {definition}" for name, _, definition in TERMS]


# The counts, named once with their unit, as the code and the --json documents name them (those names are
# contracts: tests/test_vocabulary.py checks every count key of the JSON is one of these). The engine
# counters carry vLLM's names; `core/simulation/conventions.py` counts them as each engine does.
COUNTS: dict[str, str] = {
    "n_prompts": "prompts a figure pools (compare: n_prompts_a, n_prompts_b for its two sides)",
    "n_tokens": "continuation tokens: of a prompt, or pooled over a figure's prompts",
    "iterations": "target forward passes of specprof's (and transformers') loop: one per block; per prompt, or a "
                  "mean (`n_iterations` of one generation in engines/hf/speculate)",
    "emitted": "tokens a block adds to the output: accepted draft tokens plus the bonus token "
               "(fewer at the end of a continuation)",
    "accepted": "draft tokens a block accepted",
    "rejected": "positions of a continuation where the draft's proposal was not the target's token",
    "num_judged_tokens": "draft tokens the target decided on in specprof's loop: the accepted ones plus the first "
                         "rejected one; Σ accepted / Σ judged estimates α",
    "num_drafts": "steps in which the draft proposed at least one token (vLLM's spec_decode_num_drafts)",
    "num_draft_tokens": "tokens the draft proposed, summed over steps (vLLM's spec_decode_num_draft_tokens)",
    "num_accepted_tokens": "proposed tokens the target accepted (vLLM's spec_decode_num_accepted_tokens)",
    "num_accepted_tokens_per_pos": "accepted tokens at each position 1..k of a draft "
                                   "(vLLM's spec_decode_num_accepted_tokens_per_pos)",
}
