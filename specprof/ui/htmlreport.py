"""`specprof report --html`: one self-contained HTML page of a report.

The page holds the run's settings (models, dtype, device, sampling, timings); per draft a table per
domain with the figures of `recommend --json` (the same `decide.estimates` call with the same
defaults, so the two always agree: α with its interval, best k, tokens/iter, speedup with its
interval, decision), the plots of `plots`, and the five prompts with the lowest α coloured token by
token as `inspect` shows them. Styles sit in one inline `<style>`, plots are inline `<svg>` with
text drawn as paths: opening the file makes no network request and needs no fonts or scripts.

Every table figure carries its exact value in `data-value` (the cell shows it rounded), so tests
and scripts can read the page without parsing text.

What this module does not do: compute figures (`decide`), load model weights (only the tokenizer).
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from specprof import __version__
from specprof.core import glossary
from specprof.core.answers import decide, inspection
from specprof.core.answers.analysis import load_analysis
from specprof.core.pricing import batchcost
from specprof.core.pricing.estimate import OFF_CAUSES, Estimate
from specprof.core.pricing.policy_estimate import SAMPLED_NOTE, STEP_BOUND_NOTE, PolicyEstimate
from specprof.core.records import reportfiles
from specprof.core.vocabulary import ALL
from specprof.errors import SpecprofError
from specprof.ui import inspectview, plots, render

WORST = 5

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f; margin: 0 auto;
       max-width: 1180px; padding: 0 20px 40px; }
h1 { font-size: 24px; margin: 24px 0 4px; } h2 { font-size: 19px; margin: 32px 0 8px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin: 20px 0 6px; }
.meta { color: #666; margin: 0 0 12px; }
table { border-collapse: collapse; margin: 6px 0 10px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: right; vertical-align: top; }
th { background: #f5f5f7; font-weight: 600; } td.l, th.l { text-align: left; }
table.kv td { text-align: left; } table.kv td:first-child { color: #555; white-space: nowrap; }
tr.all td { font-weight: 600; border-top: 1px solid #bbb; }
.GO { color: #1a7f37; font-weight: 700; } .NO-GO { color: #c62828; font-weight: 700; }
.INCONCLUSIVE { color: #9a6700; font-weight: 700; }
.note { color: #444; margin: 2px 0; } .plan { font-weight: 600; margin: 6px 0 12px; }
figure.plot { margin: 12px 0 20px; } figure.plot svg { max-width: 100%; height: auto; display: block; }
figcaption { color: #555; font-size: 13px; margin-top: 4px; }
.prompt { margin: 12px 0 18px; } .prompt .text { color: #555; font-size: 13px; margin: 2px 0 6px;
          white-space: pre-wrap; max-height: 5.5em; overflow: hidden; }
.tokens { font: 13px/1.7 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; white-space: pre-wrap;
          word-break: break-word; background: #fafafa; border: 1px solid #eee; padding: 8px 10px; }
.tok { border-radius: 2px; } .tok.acc { color: #0f5323; background: #dff3e4; }
.tok.rej { color: #fff; background: #c62828; }
.tok.bs { box-shadow: -2px 0 0 #3949ab; margin-left: 2px; }
.legend span { padding: 0 4px; margin-right: 8px; }
"""


def build(path: str | Path, tokenizer: str | None = None) -> tuple[str, list[plots.Plot]]:
    """The page's HTML and its plots, from a report directory (or a file in it)."""
    # Long on purpose: the page's sections in reading order.
    from specprof.core.records import tokentext
    from specprof.engines.text import auto_detokenizer

    analysis = load_analysis(path, policies=True)
    estimates = decide.estimates(analysis)  # recommend's defaults: measured costs, --min-speedup 1.1
    plans = decide.plans(estimates)
    policies = decide.policy_estimates(analysis, estimates)
    detokenizer = tokentext.load(analysis.run, tokenizer, auto_detokenizer)
    drafts = [p.draft for p in plans]
    best_k = {e.draft: e.best_k for e in estimates if e.domain == ALL}
    worst = {d: inspection.inspect_analysis(analysis, detokenizer, d, worst=WORST, k=best_k[d]) for d in drafts}
    all_plots = [plots.alpha_plot(estimates)]
    by_draft = {}
    for d in drafts:
        by_draft[d] = plots.draft_plots([e for e in estimates if e.draft == d])
        all_plots += by_draft[d]
    by_request = _request_plots(analysis, estimates)  # draft → (requests plot, context plot)
    for d in drafts:
        all_plots += by_request[d]
    by_batch = {}  # draft → plot of speedup against batch size, when the costs were measured at several
    if analysis.timings is not None and analysis.timings.by_batch_size:
        sizes = batchcost.measured_batch_sizes(analysis.timings)
        batch_plans = batchcost.batch_plans(estimates, analysis.timings, sizes)
        for d in drafts:
            by_batch[d] = plots.batch_plot([p for p in batch_plans if p.draft == d])
            all_plots.append(by_batch[d])

    body = [
        "<h1>specprof report</h1>",
        f'<p class="meta">{_e(analysis.path)} · page written {_e(_now())} by specprof {_e(__version__)}</p>',
        settings_section(analysis.run, analysis.exact),
        definitions_section(),
        "<h2>α per domain</h2>",
        figure(all_plots[0], "α per domain with its 95% bootstrap interval over prompts."),
    ]
    for p in plans:
        rows = [e for e in estimates if e.draft == p.draft]
        body += [f'<h2 id="draft-{_e(plots.slug(p.draft))}">draft {_e(p.draft)}</h2>',
                 decisions_table(rows), *notes(rows),
                 f'<p class="plan">{_e(render.plan_line(p, rows[0].min_speedup))}</p>']
        mine = [q for q in policies if q.draft == p.draft]
        if mine:
            body.append(policy_section(mine))
        elif p.draft in analysis.no_policy:
            body.append(f'<p class="note">{_e(p.draft)}: {_e(analysis.no_policy[p.draft])}</p>')
        speedup, positions, accepted = by_draft[p.draft]
        body += [
            figure(speedup, "Empirical speedup (measured tokens/iter and forward times) with its 95% interval, "
                            "and Leviathan et al.'s i.i.d. model at the same α and costs; above 1 speculation pays."),
            figure(positions, f"Blocks of k = k_max. r_i: {glossary.PER_POSITION}"),
            figure(accepted, "How many of the k proposals each block accepted (whole corpus)."),
            figure(by_request[p.draft][0], "Tokens/iter of each request at its domain's best k: the spread the "
                   "pooled figure hides; the label says the share of requests on which speculation loses "
                   "(their speedup under the cost model is below 1)."),
            figure(by_request[p.draft][1], "Tokens/iter (α at T > 0) by context length (prompt + generated "
                   "tokens) and by position in the continuation, with 95% bootstrap intervals over prompts."),
            *([figure(by_batch[p.draft], "Speedup at the best k of each serving batch size b (costs t_T(n; b), "
                      "t_D(b) measured for b sequences at once; the acceptance is the same at every b), with its "
                      f"95% interval; below 1 speculation loses. Not modelled: {batchcost.IGNORED}.")]
              if p.draft in by_batch else []),
            worst_section(worst[p.draft]),
        ]
    if policies:
        body.append(f'<p class="note">Note: {_e(STEP_BOUND_NOTE)}</p>')
    if not analysis.exact:
        body.append('<p class="note">Sampled run (T &gt; 0): per-k figures are the chain estimate; check them '
                    "with <code>specprof verify</code>.</p>")
        body.append(f'<p class="note">{_e(SAMPLED_NOTE)}</p>')
    title = f"specprof report: {analysis.path.name}"
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    return page, all_plots


def _request_plots(analysis, estimates: Sequence[Estimate]) -> dict[str, list[plots.Plot]]:
    """Per draft: the request-by-request and the context plots (issue 24)."""
    from specprof.core.answers import context, perrequest
    from specprof.ui import requestplots

    rows = perrequest.per_request(analysis, estimates)
    buckets = context.context_buckets(analysis, estimates)
    drafts = dict.fromkeys(e.draft for e in estimates)
    return {d: [requestplots.requests_plot([r for r in rows if r.draft == d]),
                requestplots.context_plot([b for b in buckets if b.draft == d])] for d in drafts}


def write(path: str | Path, html_path: str | Path, png_dir: str | Path | None = None,
          tokenizer: str | None = None) -> list[Path]:
    """Write the page (and with `png_dir` every plot as PNG) atomically; return the PNG paths."""
    html_path = Path(html_path)
    if not html_path.parent.is_dir():
        raise SpecprofError(f"--html {html_path}: directory {html_path.parent} does not exist")
    if html_path.is_dir():
        raise SpecprofError(f"--html {html_path}: is a directory; give a file name such as report.html")
    if png_dir is not None:
        png_dir = Path(png_dir)
        if png_dir.exists() and not png_dir.is_dir():
            raise SpecprofError(f"--png {png_dir}: exists and is not a directory")
    page, all_plots = build(path, tokenizer)
    reportfiles.write_file(html_path, page.encode("utf-8"))
    written = []
    if png_dir is not None:
        png_dir.mkdir(parents=True, exist_ok=True)
        for plot in all_plots:
            target = png_dir / f"{plot.name}.png"
            reportfiles.write_file(target, plots.to_png(plot))
            written.append(target)
    return written


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def settings_section(run: dict[str, Any], exact: bool) -> str:
    """Models, device, dtype, sampling, corpus, timings and versions from run.json."""
    t = run.get("target") or {}
    s = run.get("settings") or {}
    corpus = run.get("corpus") or {}
    timings = run.get("timings") or {}
    rows = [
        ("target", f"{t.get('name', '?')} ({t.get('architecture', '?')}, {t.get('num_layers', '?')} layers, "
                   f"{_params(t.get('parameters'))} parameters)"),
        ("target source", f"{t.get('source', '?')} · fingerprint {t.get('fingerprint', '?')}"),
        ("drafts", "; ".join(_draft_line(d) for d in run.get("drafts") or [])),
        ("device, dtype", f"{run.get('device', '?')}, {run.get('dtype', '?')} (torch {run.get('torch_version', '?')})"),
        ("sampling", ("greedy (T = 0): exact blocks" if exact else
                      f"T = {s.get('temperature')}, top-p {s.get('top_p')}, seed {s.get('seed')}: chain estimate")),
        ("generation", f"{s.get('max_new_tokens')} new tokens per prompt, k = 1..{s.get('k_max')}, chat template "
                       f"{'on' if s.get('chat_template') else 'off'}, batch size {s.get('batch_size')}"),
        ("corpus", f"{corpus.get('path', '?')}: {corpus.get('n_prompts', '?')} prompts"
                   + (f", domains {', '.join(corpus['domains'])}" if corpus.get("domains") else "")
                   + (f", first {corpus['limit']} per domain" if corpus.get("limit") else "")),
    ]
    if timings:
        forward = ", ".join(f"{1000 * x:.2f}" for x in timings.get("target_forward_s", []))
        rows.append(("target forward t_T(n), n = 1, 2, …", f"{forward} ms (context {timings.get('context_tokens')} "
                                                          "tokens)"))
        catchup = timings.get("draft_catchup_s") or {}
        steps = "; ".join(
            f"{name}: {1000 * x:.3g} ms" + (f" (+{1000 * catchup[name]:.3g} ms catch-up)" if name in catchup else "")
            for name, x in (timings.get("draft_step_s") or {}).items()
        )
        rows.append(("draft step t_D", steps))
    rows += [
        ("run", f"{run.get('started_at', '?')} → {run.get('finished_at', '?')}"),
        ("versions", f"specprof {run.get('specprof_version', '?')}, report schema {run.get('schema_version', '?')}"),
    ]
    cells = "\n".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<h2>Run</h2>\n<table class="kv" id="settings">\n{cells}\n</table>'


def _params(n: Any) -> str:
    return f"{n / 1e6:.0f}M" if isinstance(n, (int, float)) else "?"


def _draft_line(d: dict[str, Any]) -> str:
    extra = ", ".join(f"{k} {v}" for k, v in d.items() if k not in ("name", "source", "fingerprint"))
    return f"{d.get('name', '?')} ({extra})"


# (column heading, recommendation_json keys shown in it, digits)
COLUMNS = [
    ("prompts", ("n_prompts",), 0),
    ("α [95% CI]", ("alpha", "alpha_lo", "alpha_hi"), 3),
    ("best k", ("best_k",), 0),
    ("tokens/iter", ("tokens_per_iter",), 2),
    ("speedup [95% CI]", ("speedup", "speedup_lo", "speedup_hi"), 2),
    ("i.i.d. speedup", ("speedup_iid",), 2),
]


def cell_value(value: Any, digits: int) -> str:
    """How the page prints a figure (`data-value` keeps it exact)."""
    if value is None:
        return "–"
    return str(value) if digits == 0 else f"{value:.{digits}f}"


def _figure_span(draft: str, domain: str, key: str, value: Any, digits: int) -> str:
    exact = json.dumps(value)
    return (f'<span class="v" data-draft="{_e(draft)}" data-domain="{_e(domain)}" data-key="{key}" '
            f'data-value="{_e(exact)}">{_e(cell_value(value, digits))}</span>')


def decisions_table(rows: Sequence[Estimate]) -> str:
    """One row per domain (ALL last) at its best k: the figures of `recommend --json`."""
    head = '<th class="l">domain</th>' + "".join(f"<th>{_e(name)}</th>" for name, _, _ in COLUMNS) + \
        '<th class="l">decision</th>'
    lines = []
    for e in rows:
        rec = decide.recommendation_json(e)
        cells = [f'<td class="l">{_e(e.domain)}</td>']
        for _, keys, digits in COLUMNS:
            spans = [_figure_span(e.draft, e.domain, k, rec[k], digits) for k in keys]
            text = spans[0] if len(spans) == 1 else f"{spans[0]} [{spans[1]}, {spans[2]}]"
            cells.append(f"<td>{text}</td>")
        decision = rec["decision"]
        cells.append(f'<td class="l"><span class="v {decision}" data-draft="{_e(e.draft)}" '
                     f'data-domain="{_e(e.domain)}" data-key="decision" data-value="{_e(json.dumps(decision))}">'
                     f"{_e(decision)}</span></td>")
        cls = ' class="all"' if e.domain == ALL else ""
        lines.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (f'<table class="decisions" data-draft="{_e(rows[0].draft)}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
            + "\n".join(lines) + "\n</tbody>\n</table>")


def notes(rows: Sequence[Estimate]) -> list[str]:
    """The reasons and notes `recommend` prints under its table."""
    out = [render.costs_caption(rows[0])]
    out += [f"{e.domain}: {e.verdict().decision} — {e.why()}" for e in rows if e.why()]
    off = [e.domain for e in rows if e.effectively_off and e.domain != ALL]
    if off:
        out.append(f"speculation is effectively off for {', '.join(off)}; usual causes: {OFF_CAUSES}")
    if (line := render.disagreement_note(rows)) is not None:
        out.append(line)
    # one paragraph per line: the costs caption holds its warning on a line of its own
    return [f'<p class="note">{_e(line)}</p>' for n in out for line in n.splitlines() if line.strip()]


def definitions_section() -> str:
    """The glossary: the same definitions as `recommend --help` and the README."""
    rows = "\n".join(f'<tr data-term="{_e(column)}"><td>{_e(name)}</td><td>{_e(definition)}</td></tr>'
                     for name, column, definition in glossary.TERMS)
    return f'<h2>Definitions</h2>\n<table class="kv" id="definitions">\n{rows}\n</table>'


def policy_section(policies: Sequence[PolicyEstimate]) -> str:
    """The best confidence-threshold policy per domain beside the best fixed k: `recommend`'s table."""
    heads = ["domain", "fixed k", "speedup", "k_max", "τ", "tokens/iter", "draft steps/iter",
             "speedup bounds [95% CI]", "gain vs fixed k", "verdict"]
    left = ' class="l"'
    head = "".join(f'<th{left if h in ("domain", "verdict") else ""}>{_e(h)}</th>' for h in heads)
    lines = []
    for q in policies:
        cells = [
            q.domain, str(q.fixed_k), render.fmt(q.fixed_speedup), str(q.k_max), f"{q.tau:g}",
            render.fmt_interval(q.tokens_per_iter, q.tokens_per_iter_lo, q.tokens_per_iter_hi),
            render.fmt_range(q.draft_steps_lo_bound, q.draft_steps_hi_bound),
            f"{render.fmt_range(q.speedup_lo_bound, q.speedup_hi_bound)} [{render.fmt(q.speedup_lo)}, "
            f"{render.fmt(q.speedup_hi)}]",
            f"[{q.gain_lo:+.3f}, {q.gain_hi:+.3f}]", q.verdict,
        ]
        tds = "".join(f'<td{left if i in (0, len(cells) - 1) else ""}>{_e(c)}</td>' for i, c in enumerate(cells))
        cls = ' class="all"' if q.domain == ALL else ""
        lines.append(f'<tr{cls} data-domain="{_e(q.domain)}">{tds}</tr>')
    return (f'<h3>Confidence-threshold drafting: stop after a proposal whose top-1 p &lt; τ, at most k_max</h3>\n'
            f'<table class="policy" data-draft="{_e(policies[0].draft)}">\n<thead><tr>{head}</tr></thead>\n'
            "<tbody>\n" + "\n".join(lines) + "\n</tbody>\n</table>\n"
            f'<p class="note">{_e(render.POLICY_CAPTION)}</p>')


def figure(plot: plots.Plot, caption: str) -> str:
    return (f'<figure class="plot" data-plot="{_e(plot.name)}">\n{plots.to_svg(plot)}\n'
            f"<figcaption>{_e(caption)}</figcaption>\n</figure>")


def token_spans(view: inspection.PromptView, exact: bool) -> str:
    """The continuation as one `<span>` per token: class acc/rej by `match` at T = 0 (bs: a block starts),
    a background shaded by accept_prob at T > 0. Each span carries its position and verdict."""
    spans = []
    for t in view.tokens:
        classes = ["tok", "acc" if t.match else "rej"] if exact else ["tok"]
        if exact and t.block_start and t.position > 0:
            classes.append("bs")
        style = "" if exact else ' style="background: rgb({}, {}, {})"'.format(*inspectview.shade(t.accept_prob))
        proposal = repr(t.draft_text) if t.draft_token >= 0 else "none"
        title = f"position {t.position}; target {t.text!r}; draft proposed {proposal}; β = {t.accept_prob:.3f}"
        spans.append(
            f'<span class="{" ".join(classes)}" data-pos="{t.position}" data-match="{int(t.match)}" '
            f'data-accept-prob="{t.accept_prob:.4f}"{style} title="{_e(title)}">'
            f'{_e(inspectview.shown_piece(t.text))}</span>'
        )
    return "".join(spans)


def worst_section(i: inspection.Inspection) -> str:
    """The prompts with the lowest α for one draft, coloured token by token."""
    parts = [f"<h3>{len(i.shown)} prompts with the lowest α (draft {_e(i.draft)}, blocks at k = {i.k})</h3>"]
    if i.exact:
        parts.append('<p class="legend"><span class="tok acc">accepted</span><span class="tok rej">rejected</span>'
                     f'<span class="tok acc bs">a block at k = {i.k} starts</span> (hover a token for the '
                     "draft's proposal)</p>")
    else:
        parts.append('<p class="legend">Background from red (β = 0) to green (β = 1): the chance speculative '
                     "sampling accepts the draft at that token; blocks are random at T &gt; 0 and not marked.</p>")
    for v in i.shown:
        f = v.figures
        parts.append(
            f'<div class="prompt" data-prompt="{_e(f.prompt_id)}" data-draft="{_e(i.draft)}">'
            f"<b>{_e(f.prompt_id)}</b> ({_e(f.domain)}): α {f.alpha:.3f}, {f.tokens_per_iter:.2f} tokens/iter at "
            f"k = {i.k}, {v.rejected} of {f.n_tokens} tokens rejected"
            f'<div class="text">{_e(v.prompt_text)}</div>'
            f'<div class="tokens">{token_spans(v, i.exact)}</div></div>'
        )
    return f'<section class="worst" data-draft="{_e(i.draft)}">\n' + "\n".join(parts) + "\n</section>"
