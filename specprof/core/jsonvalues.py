"""Values for `--json` output: JSON has no NaN or infinity, so "not defined" is written as null.

A figure is undefined when there is nothing to compute it from (a domain with no tokens, a prompt
with no continuation, a draft that never pays). No torch here.
"""

from __future__ import annotations

import math
from typing import Any


def json_number(x: float | None) -> float | None:
    """`x` as a float, or None when it is missing, NaN or infinite."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def json_clean(value: Any) -> Any:
    """`value` with every non-finite float inside dicts and lists replaced by None."""
    if isinstance(value, float):
        return json_number(value)
    if isinstance(value, dict):
        return {k: json_clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_clean(v) for v in value]
    return value
