"""specprof: profile speculative-decoding acceptance before turning speculation on.

The decision commands as Python functions (docs/python-api.md), each returning what its `--json` prints
(`result.to_json()`), without torch:

    from specprof import load_report, recommend
    result = recommend(load_report("specprof-report"), min_speedup=1.1)

They are imported on first use (module `__getattr__`), so `import specprof` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name → (module, attribute): the public API, each loaded when first asked for
_PUBLIC = {
    "load_report": ("specprof.core.records.reportfiles", "load_report"),
    "recommend": ("specprof.core.answers.recommend", "recommend"),
    "emit": ("specprof.core.answers.recommend", "emit"),
    "what_if": ("specprof.core.answers.decide", "what_if"),
    "gate": ("specprof.core.answers.decide", "gate_report"),
    "compare": ("specprof.core.answers.compare", "compare_reports"),
    "inspect": ("specprof.core.answers.inspection", "inspect"),
    "SpecprofError": ("specprof.errors", "SpecprofError"),
}

__all__ = ["__version__", "load_report", "recommend", "emit", "what_if", "gate", "compare", "inspect", "SpecprofError"]

if TYPE_CHECKING:
    from specprof.core.answers.compare import compare_reports as compare
    from specprof.core.answers.decide import gate_report as gate
    from specprof.core.answers.decide import what_if
    from specprof.core.answers.inspection import inspect
    from specprof.core.answers.recommend import emit, recommend
    from specprof.core.records.reportfiles import load_report
    from specprof.errors import SpecprofError


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'specprof' has no attribute {name!r}")
    module, attribute = _PUBLIC[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
