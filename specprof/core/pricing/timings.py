"""Forward times measured on the profiling hardware, and the costs they give each draft (docs/design.md §2).

`Timings` is what run.json's "timings" holds (`engines.hf.measure` measures them); `costs_for` turns
them, or a planning `--cost-ratio`, into a draft's `costmodel.Costs`. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from specprof.core.pricing import costmodel
from specprof.errors import SpecprofError


@dataclass(frozen=True)
class Timings:
    """Forward times measured by `profile` on its own hardware (docs/design.md §2)."""

    target_forward_s: tuple[float, ...]  # [n - 1]: target verifying n = 1..k_max+1 tokens with a KV cache
    draft_step_s: dict[str, float]  # per draft: seconds per proposed token
    context_tokens: int  # the context length the times were taken at
    # per draft: extra seconds of its first step after a fully accepted block (2 tokens instead of 1);
    # absent from older reports (then 0)
    draft_catchup_s: dict[str, float] = field(default_factory=dict)
    # the same figures at each measured serving batch size (`core/pricing/batchcost.py`), batch 1 included and
    # equal to the figures above; empty in reports measured at batch 1 only (every report before them)
    by_batch_size: tuple[Timings, ...] = ()
    batch_size: int = 1  # the sequences verified together when these times were taken

    def cost_ratio(self, draft: str) -> float:
        return self.draft_step_s[draft] / self.target_forward_s[0]

    def as_dict(self) -> dict:
        return {
            "target_forward_s": list(self.target_forward_s),
            "draft_step_s": dict(self.draft_step_s),
            "context_tokens": self.context_tokens,
            "draft_catchup_s": dict(self.draft_catchup_s),
        } | ({"by_batch_size": [
            {"batch_size": t.batch_size, "target_forward_s": list(t.target_forward_s),
             "draft_step_s": dict(t.draft_step_s), "draft_catchup_s": dict(t.draft_catchup_s)}
            for t in self.by_batch_size
        ]} if self.by_batch_size else {})

    @classmethod
    def from_dict(cls, d: dict) -> Timings:
        by_batch = tuple(
            cls(tuple(b["target_forward_s"]), dict(b["draft_step_s"]), int(d["context_tokens"]),
                dict(b.get("draft_catchup_s", {})), batch_size=int(b["batch_size"]))
            for b in d.get("by_batch_size") or ()
        )
        return cls(tuple(d["target_forward_s"]), dict(d["draft_step_s"]), int(d["context_tokens"]),
                   dict(d.get("draft_catchup_s", {})), by_batch)


def costs_for(draft: str, timings: Timings | None, cost_ratio: float | None, k_max: int) -> costmodel.Costs:
    """Measured costs from the run's timings, or a flat verification cost at `cost_ratio` (`--cost-ratio`)."""
    if cost_ratio is not None:
        return costmodel.Costs.flat(cost_ratio, k_max)
    if timings is None or draft not in timings.draft_step_s:
        raise SpecprofError(f"the report has no timings for draft {draft!r}; pass --cost-ratio")
    if len(timings.target_forward_s) < k_max + 1:
        raise SpecprofError(
            f"--k-max {k_max}: the report's timings cover k ≤ {len(timings.target_forward_s) - 1}; "
            "pass --cost-ratio to plan for longer drafts"
        )
    return costmodel.Costs.from_times(
        timings.draft_step_s[draft], timings.target_forward_s, k_max, timings.draft_catchup_s.get(draft, 0.0)
    )
