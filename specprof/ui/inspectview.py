"""`inspect` in the terminal: a continuation token by token, coloured by the draft's agreement.

Accepted tokens green, rejected ones white on red (at T = 0), ┊ where a speculative block starts;
at T > 0 every token is shaded from red to green by accept_prob. `htmlreport` colours the page the
same way (`shade`, `shown_piece`).
"""

from __future__ import annotations

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from specprof.ui.render import fmt

ACCEPTED = "green"
REJECTED = "bold bright_white on red3"
BLOCK_MARK = "┊"  # printed before each speculative block after the first (T = 0)


def shade(accept_prob: float) -> tuple[int, int, int]:
    """An RGB background from red (β = 0) through amber to green (β = 1), for sampled runs."""
    b = min(max(float(accept_prob), 0.0), 1.0)
    red, amber, green = (205, 49, 49), (230, 180, 40), (40, 160, 70)
    lo, hi, f = (red, amber, 2 * b) if b < 0.5 else (amber, green, 2 * b - 1)
    return tuple(round(x + f * (y - x)) for x, y in zip(lo, hi))  # type: ignore[return-value]


def shown_piece(text: str) -> str:
    """A token's text as printed: a newline shows as ↵ before the break, so a rejected newline is visible."""
    return text.replace("\n", "↵\n")


def token_text(view, exact: bool) -> Text:
    """The continuation of an `inspection.PromptView`, one styled run per token.

    Each token's style carries its position (`style.meta["position"]`), so the colouring can be
    checked token by token. T = 0: accepted tokens green, rejected (match false) white on red, a
    dim ┊ where each block at k starts. T > 0: every token on a background shaded by accept_prob.
    """
    from rich.color import Color
    from rich.style import Style

    text = Text()
    for t in view.tokens:
        if exact and t.block_start and t.position > 0:
            text.append(BLOCK_MARK, style="dim cyan")
        meta = {"position": t.position, "match": t.match}
        if exact:
            style = Style.parse(ACCEPTED if t.match else REJECTED) + Style(meta=meta)
        else:
            style = Style(color="black", bgcolor=Color.from_rgb(*shade(t.accept_prob)), meta=meta)
        text.append(shown_piece(t.text), style=style)
    return text


def inspect_view(i, exported=None) -> Group:
    """`specprof inspect`: the ranking table, then each shown prompt's coloured continuation."""
    how_k = f"best k for {i.scope}" if i.k_is_best else "--k"
    sampling = "greedy: exact blocks" if i.exact else f"T = {i.temperature:g}: tokens shaded by accept_prob β"
    parts: list = [Text(f"draft {i.draft} · k = {i.k} ({how_k}) · {sampling}")]
    if len(i.drafts) > 1:
        parts.append(Text(f"other drafts: {', '.join(d for d in i.drafts if d != i.draft)} (pick with --draft)",
                          style="dim"))
    single = i.one_prompt
    title = f"prompt {i.shown[0].figures.prompt_id}" if single else (
        f"lowest α in {i.scope}: {len(i.shown)} of {len(i.prompts)} prompts")
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("prompt", "domain", "tokens", "α", f"tokens/iter (k={i.k})", "rejected"):
        table.add_column(name, justify="left" if name in ("prompt", "domain") else "right")
    for v in i.shown:
        f = v.figures
        table.add_row(f.prompt_id, f.domain, str(f.n_tokens), fmt(f.alpha, 3), fmt(f.tokens_per_iter),
                      str(v.rejected))
    parts.append(table)
    for v in i.shown:
        f = v.figures
        head = Text(f"── {f.prompt_id} ({f.domain}): α {fmt(f.alpha, 3)}, {fmt(f.tokens_per_iter)} tokens/iter at "
                    f"k={i.k}, {v.rejected} of {f.n_tokens} tokens rejected", style="bold")
        prompt = v.prompt_text if single else _one_line(v.prompt_text, 160)
        parts += [head, Text("prompt: ", style="dim") + Text(prompt), token_text(v, i.exact)]
        if single:
            parts.append(rejections_table(v))
        parts.append(Text(""))
    if i.exact:
        # An n-gram lookup that found no match proposed nothing: say so rather than "another token".
        none = any(not t.match and t.draft_token < 0 for v in i.shown for t in v.tokens)
        proposed = "proposed another token or, where its lookup found no match, nothing" if none else \
            "proposed another"
        legend = Text("green: accepted · ") + Text("white on red", style=REJECTED) + Text(
            f": rejected (the target's token; the draft {proposed}) · {BLOCK_MARK}: a block at k={i.k} starts"
        )
    else:
        legend = Text("background from red (β = 0) to green (β = 1): the chance speculative sampling accepts the "
                      "draft at that token; blocks are random at T > 0 and not marked")
    parts.append(legend)
    if exported is not None:
        parts.append(Text(f"wrote {len(i.shown)} prompts to {exported} (profile them with: specprof profile "
                          f"{exported})"))
    return Group(*parts)


def rejections_table(v) -> Table:
    """Every rejected position of one prompt: what the target wrote and what the draft proposed."""
    table = Table(title="rejected tokens", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("position", "target", "draft proposed", "accept_prob"):
        table.add_column(name, justify="right" if name in ("position", "accept_prob") else "left")
    for t in v.tokens:
        if not t.match:
            table.add_row(str(t.position), repr(t.text), repr(t.draft_text) if t.draft_token >= 0 else "(none)",
                          fmt(t.accept_prob, 3))
    return table


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
