"""Terminal output of `verify --engine vllm --concurrency`: predicted against measured speedup per batch size."""

from __future__ import annotations

import math

from rich.table import Table


def table(result) -> Table:
    """One row per batch size (rows are `verify_concurrency.Row`)."""
    t = Table(title=f"verify --concurrency: draft {result.draft} at k = {result.k}, vLLM {result.vllm_version or '?'}"
              f", {result.max_new_tokens} new tokens, costs from {result.costs_source}", title_justify="left")
    for name in ("B", "predicted [95%]", "best k (its speedup, decision)", "tokens/s no spec", "tokens/s spec",
                 "measured", "vLLM mean acc. len", "in flight"):
        t.add_column(name, justify="right")
    for r in result.rows:
        p = r.prediction
        t.add_row(str(p.batch_size), f"{_f(p.speedup)}× [{_f(p.speedup_lo)}, {_f(p.speedup_hi)}]",
                  f"{p.best_k} ({_f(p.best_speedup)}×, {p.decision})", _f(r.baseline.tokens_per_s, 4),
                  _f(r.speculative.tokens_per_s, 4), f"{_f(r.measured_speedup)}×",
                  _f(r.engine_mean_acceptance_length), f"{r.baseline.max_in_flight}/{r.speculative.max_in_flight}")
    return t


def lines(result) -> list[str]:
    from specprof.commands.verify_concurrency import NOT_MODELLED

    out = []
    for r in result.rows:
        if r.outputs_differ and result.temperature == 0:
            out.append(f"note: B={r.prediction.batch_size}: {r.outputs_differ} of {r.speculative.requests} outputs "
                       "differ between the two servers (batched kernels can break near-ties; tokens/s compare "
                       "the tokens each produced)")
    out.append("note: measured = output tokens/s with speculation ÷ without, after one warm-up request per "
               "stream; predicted = the report's speedup at k priced with the costs at batch size B")
    out.append("note: the prediction does not model: " + "; ".join(NOT_MODELLED))
    return out


def _f(value: float, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"
