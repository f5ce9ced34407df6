"""The target's continuations as a report records them, and where two token sequences first differ.

`verify` (here and against vLLM) checks every live output against these. No torch here.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd


def report_continuations(tokens: pd.DataFrame) -> dict[str, list[int]]:
    """Prompt id → the report's continuation (every draft's rows hold the same target tokens; the
    tokens past the end live in past_end.parquet)."""
    first = tokens["draft"].iloc[0]
    rows = tokens[tokens["draft"] == first].sort_values(["prompt_id", "position"])
    return {str(pid): g["target_token"].astype(int).tolist() for pid, g in rows.groupby("prompt_id", sort=False)}


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first position where `a` and `b` differ (the shorter one's length when one is a prefix of
    the other), or None when they are equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
