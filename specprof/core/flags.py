"""Checks of flag values, shared by the CLI and the commands: each failure is one line naming the flag."""

from __future__ import annotations

from collections.abc import Sequence

from specprof.errors import SpecprofError


def check_range(flag: str, value: float, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False) -> None:
    """`--k-max 0: must be ≥ 1`, `--top-p 0: must be > 0`, `--temperature nan: must be a number`."""
    if value != value:  # NaN
        raise SpecprofError(f"{flag} {value}: must be a number")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise SpecprofError(f"{flag} {value}: must be {'>' if lo_open else '≥'} {lo}")
    if hi is not None and value > hi:
        raise SpecprofError(f"{flag} {value}: must be ≤ {hi}")


def check_once(flag: str, values: Sequence[str]) -> None:
    """A repeatable flag given the same value twice (`--draft ngram --draft ngram`)."""
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise SpecprofError(f"{flag} {value}: given twice")
        seen.add(value)
