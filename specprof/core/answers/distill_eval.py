"""The bookkeeping of `specprof distill` that needs no torch: the held-out split, early stopping,
and the per-domain α table written to `distill.json` and shown in the terminal.

Held-out prompts are chosen per domain (stratified), by prompt and never by token: positions of
one prompt are strongly correlated, so a token-level split would measure memorisation. A domain
with a single prompt keeps it for training (nothing is left to learn from otherwise).

What this module does not do: train, or measure α on prompts (`distill` does, on cached states).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
from rich.table import Table

from specprof.core.vocabulary import ALL
from specprof.errors import SpecprofError


def check_holdout(fraction: float) -> None:
    if not 0 < fraction < 1:  # also false for NaN
        raise SpecprofError(f"--holdout {fraction}: must be between 0 and 1 (exclusive)")


def split_holdout(domains: Sequence[str], fraction: float, seed: int) -> list[bool]:
    """For each prompt (given by its domain), True if it is held out.

    Per domain with n ≥ 2 prompts, round(fraction · n) prompts are held out, at least 1 and at
    most n − 1, chosen by a seeded shuffle. Example: 12 prompts per domain at fraction 0.1 → 1
    held out per domain; at 0.25 → 3.
    """
    check_holdout(fraction)
    rng = random.Random(seed)
    by_domain: dict[str, list[int]] = {}
    for i, d in enumerate(domains):
        by_domain.setdefault(d, []).append(i)
    held = [False] * len(domains)
    for d in sorted(by_domain):
        members = by_domain[d]
        if len(members) < 2:
            continue
        n = min(max(1, round(fraction * len(members))), len(members) - 1)
        for i in rng.sample(members, n):
            held[i] = True
    if not any(held):
        raise SpecprofError(
            "--holdout: every domain has a single prompt, so none can be held out for early stopping; "
            "give at least two prompts in some domain"
        )
    return held


def lr_factor(step: int, warmup: int, horizon: int, floor: float = 0.1) -> float:
    """Learning-rate multiplier: linear warm-up over `warmup` steps, then cosine decay from 1 to
    `floor` at step `horizon` (and `floor` after it). Example: warmup 10, horizon 100 → step 0: 0.1,
    step 9: 1.0, step 50: 0.55, step 100: 0.1."""
    warm = min(1.0, (step + 1) / max(warmup, 1))
    progress = min(step / max(horizon, 1), 1.0)
    return warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class EarlyStopping:
    """Keep the best held-out score; stop after `patience` evaluations without improvement."""

    patience: int
    best: float = -math.inf
    best_step: int = 0
    since_best: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)

    def update(self, step: int, score: float) -> bool:
        """Record a score; True if it is the new best (the caller then keeps the weights)."""
        self.history.append((step, score))
        if score > self.best:
            self.best, self.best_step, self.since_best = score, step, 0
            return True
        self.since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.since_best >= self.patience


@dataclass(frozen=True)
class DomainCounts:
    """Greedy matches of one draft on one prompt's continuation."""

    domain: str
    tokens: int  # continuation positions
    matches: int  # positions where the draft's argmax equals the target's token


def alpha_table(before: Sequence[DomainCounts], after: Sequence[DomainCounts]) -> pd.DataFrame:
    """Per domain (and ALL): prompts, tokens, α of the untrained early exit and of the trained draft.

    α pools tokens (Σ matches / Σ tokens), as `profile` does. `before` and `after` list the same
    prompts in the same order.
    """
    rows = []
    frame = pd.DataFrame(
        {
            "domain": [c.domain for c in before],
            "tokens": [c.tokens for c in before],
            "before": [c.matches for c in before],
            "after": [c.matches for c in after],
        }
    )
    groups = [(d, frame[frame.domain == d]) for d in sorted(set(frame.domain))] + [(ALL, frame)]
    for domain, g in groups:
        tokens = int(g.tokens.sum())
        rows.append(
            {
                "domain": domain,
                "prompts": len(g),
                "tokens": tokens,
                "alpha_early_exit": g.before.sum() / tokens if tokens else float("nan"),
                "alpha_distilled": g.after.sum() / tokens if tokens else float("nan"),
            }
        )
    table = pd.DataFrame(rows)
    table["gain"] = table.alpha_distilled - table.alpha_early_exit
    return table


def render_table(table: pd.DataFrame, before: str, title: str) -> Table:
    """The held-out table; `before` names what the distilled draft is compared with (e.g. early-exit:4)."""
    out = Table(title=title, title_justify="left")
    for name in ("domain", "prompts", "tokens", f"α {before}", "α distilled", "gain"):
        out.add_column(name, justify="left" if name == "domain" else "right")
    for r in table.itertuples():
        out.add_row(
            f"[bold]{r.domain}[/]" if r.domain == ALL else r.domain,
            str(r.prompts),
            str(r.tokens),
            f"{r.alpha_early_exit:.3f}",
            f"{r.alpha_distilled:.3f}",
            f"{r.gain:+.3f}",
        )
    return out
