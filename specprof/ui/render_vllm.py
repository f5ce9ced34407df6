"""Terminal output of `verify --engine vllm`: specprof's counters beside vLLM's, then what differs and why."""

from __future__ import annotations

import math

from rich.table import Table


def counters_table(result) -> Table:
    """One row per k × counter (rows are `verify_vllm.CounterRow`)."""
    table = Table(title=f"verify --engine vllm: draft {result.draft}, specprof's prediction vs vLLM's /metrics",
                  title_justify="left")
    for name in ("k", "counter", "specprof", "vLLM", "check"):
        table.add_column(name, justify="left" if name in ("counter", "check") else "right")
    for r in result.counters:
        table.add_row(str(r.k), r.counter, str(r.predicted), str(r.engine),
                      "[green]equal[/]" if r.equal else f"[red]{r.engine - r.predicted:+d}[/]")
    return table


def sampled_table(result) -> Table:
    table = Table(title=f"verify --engine vllm: draft {result.draft}, sampled run (T = {result.temperature:g})",
                  title_justify="left")
    for name in ("k", "vLLM accept@1", "vLLM draft acc. rate", "vLLM mean acc. len", "specprof draft acc. rate",
                 "specprof α [range]", "check"):
        table.add_column(name, justify="left" if name == "check" else "right")
    for s in result.sampled:
        table.add_row(str(s.k), _f(s.engine_first_position_rate), _f(s.engine_draft_acceptance_rate),
                      _f(s.engine_mean_acceptance_length), _f(s.report_draft_acceptance_rate),
                      f"{_f(s.alpha)} [{_f(s.alpha_lo)}, {_f(s.alpha_hi)}]",
                      f"[yellow]{s.flag}[/]" if s.flag else "[green]inside[/]")
    return table


def lines(result) -> list[str]:
    """Every difference, one line each, saying where and why (Rich markup: error, flag or note first)."""
    out = []
    for d in result.continuations:
        end = lambda t: "(end)" if t < 0 else str(t)  # noqa: E731
        why = (f"a near-tie of the target (vLLM's own top-2 margin {_f(d.margin, 5)}, gap {_f(d.gap, 5)})"
               if d.verdict == "near-tie" else
               f"the target diverged (vLLM's top-2 margin there {_f(d.margin, 5)}, gap {_f(d.gap, 5)})")
        out.append(f"[red]error:[/] k={d.k}, prompt {d.prompt_id}: continuation differs at position {d.position}: "
                   f"report "
                   f"{end(d.report_token)}, vLLM {end(d.engine_token)} — {why}; this prompt's counters are not "
                   "comparable after it")
    for m in result.prompt_mismatches:
        diff = ", ".join(f"{key} {m.predicted[key]}→{m.engine[key]}" for key in m.predicted
                         if m.predicted[key] != m.engine[key])
        ties = ", ".join(f"position {p} (margin {m_:.2g})" for p, m_ in m.near_ties[:6])
        why = (f"draft near-ties at {ties}" if m.near_ties else
               "no draft near-tie found: a real difference between vLLM's proposer and specprof's model of it")
        out.append(f"[red]error:[/] k={m.k}, prompt {m.prompt_id}: identical continuation, counters differ "
                   f"({diff}); {why}")
    steps = getattr(result, "steps", None)
    for d in steps.diffs if steps else ():
        side = lambda v: "no step" if v is None else f"drafted {v[0]}, accepted {v[1]}"  # noqa: E731
        out.append(f"[red]error:[/] k={d.k}, prompt {d.prompt_id}: per-request steps differ first at step {d.step} "
                   f"(block from position {d.start}): specprof {side(d.predicted)}, vLLM {side(d.engine)}; the "
                   f"target's top-2 margin at the disputed token {_f(d.margin, 5)}")
    for k, n in sorted(steps.compared.items() if steps else ()):
        out.append(f"note: k={k}: {n} requests compared step by step (per_step_drafted / per_step_accepted)")
    out += [f"note: {n}" for n in result.notes]
    out += [f"k={r.k} position {r.position} ({r.mode}): vLLM {r.engine_rate:.3f}, expected {r.predicted:.3f} "
            f"[{r.predicted_lo:.3f}, {r.predicted_hi:.3f}]: {r.verdict}" for r in getattr(result, "positions", ())]
    for s in result.sampled:
        if s.flag:
            out.append(f"[yellow]flag:[/] k={s.k}: {s.flag} (see README: vLLM's CPU build at T > 0)")
    return out


def summary_line(result) -> str:
    done = ", ".join(f"k={k}: {n} prompts" for k, n in sorted(result.prompts_done.items()))
    version = f"vLLM {result.vllm_version}" if result.vllm_version else "vLLM"
    if result.temperature > 0:
        return f"{version}; {done}; sampled (outputs are not compared token by token)"
    state = "every counter and continuation equal" if not result.mismatch else "MISMATCH"
    return f"{version}; {done}; {state}"


def _f(value: float, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"
