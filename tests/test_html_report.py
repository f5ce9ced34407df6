"""`specprof report --html` on a tiny-model report: the page in a real headless Chromium, PNGs, errors.

The browser test drives the system `chromium` (Debian's package; `.ci/run` installs it) with Playwright
(`executable_path`: Playwright's own browser download is never used). It is skipped only where chromium or
Playwright is missing and SPECPROF_REQUIRE_BROWSER is unset; CI sets it, so there a missing browser fails
the test instead of skipping it.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil

import pytest

from specprof.ui import htmlreport, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TABLE_KEYS = ("n_prompts", "alpha", "alpha_lo", "alpha_hi", "best_k", "tokens_per_iter", "speedup", "speedup_lo",
              "speedup_hi", "speedup_iid", "decision")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(
    (CHROMIUM is None or importlib.util.find_spec("playwright") is None)
    and not os.environ.get("SPECPROF_REQUIRE_BROWSER"),
    reason="chromium or playwright is not installed (apt-get install chromium; pip install -e '.[test]')",
)


@pytest.fixture(scope="module")
def page(small_report, tmp_path_factory):
    from typer.testing import CliRunner

    from specprof.ui.cli import app

    out = tmp_path_factory.mktemp("page")
    runner = CliRunner()
    r = runner.invoke(app, ["report", str(small_report), "--html", str(out / "report.html"), "--png",
                            str(out / "png")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rec = runner.invoke(app, ["recommend", str(small_report), "--json"], catch_exceptions=False)
    assert rec.exit_code == 0, rec.output
    return {"html": out / "report.html", "png": out / "png", "recommend": json.loads(rec.stdout)}


def expected_plots(recommend) -> list[str]:
    drafts = [d["draft"] for d in recommend["drafts"]]
    return ["alpha"] + [f"{kind}-{plots.slug(d)}" for d in drafts for kind in ("speedup", "positions", "accepted")]


FIGURES_JS = """JSON.stringify([...document.querySelectorAll('figure.plot')].map(f => {
  const svg = f.querySelector('svg'), box = svg ? svg.getBoundingClientRect() : null, css = getComputedStyle(f);
  return {name: f.dataset.plot, width: box ? box.width : 0, height: box ? box.height : 0,
          shown: css.display !== 'none' && css.visibility === 'visible' && f.offsetParent !== null,
          marks: svg ? svg.querySelectorAll('path, use').length : 0};
}))"""

VALUES_JS = """JSON.stringify([...document.querySelectorAll('table.decisions span.v')].map(s => ({
  draft: s.dataset.draft, domain: s.dataset.domain, key: s.dataset.key, value: JSON.parse(s.dataset.value),
  text: s.textContent})))"""


@needs_browser
def test_report_page_in_headless_chromium(page):
    from playwright.sync_api import sync_playwright

    url = page["html"].resolve().as_uri()
    requested, failed, errors = [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            tab.on("request", lambda r: requested.append(r.url))
            tab.on("requestfailed", lambda r: failed.append(r.url))
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.goto(url, wait_until="load")
            figures = json.loads(tab.evaluate(FIGURES_JS))
            values = json.loads(tab.evaluate(VALUES_JS))
            screenshot = tab.screenshot(full_page=True)  # the whole page, not just the viewport
            title = tab.title()
        finally:
            browser.close()

    # loaded from the file alone: one request (the page itself), none failed, no script errors
    assert requested == [url]
    assert failed == []
    assert errors == [] and title.startswith("specprof report")

    # every plot is there, drawn, and takes room on the page
    assert [f["name"] for f in figures] == expected_plots(page["recommend"])
    for f in figures:
        assert f["shown"] and f["width"] > 100 and f["height"] > 100 and f["marks"] > 10, f

    # a real picture: a PNG as tall as the page with many colours, not a blank canvas
    assert screenshot.startswith(PNG_SIGNATURE)
    from PIL import Image

    image = Image.open(io.BytesIO(screenshot)).convert("RGB")
    assert image.width >= 1000 and image.height > 2000
    assert len(image.getcolors(maxcolors=1 << 20) or []) > 50

    # the table's numbers are recommend --json's, exactly (data-value) and as printed
    shown = {(v["draft"], v["domain"], v["key"]): v for v in values}
    recs = page["recommend"]["recommendations"]
    assert len(shown) == len(recs) * len(TABLE_KEYS)
    for rec in recs:
        for key in TABLE_KEYS:
            v = shown[(rec["draft"], rec["domain"], key)]
            assert v["value"] == rec[key], (rec["draft"], rec["domain"], key)
            digits = next(d for _, keys, d in htmlreport.COLUMNS if key in keys) if key != "decision" else None
            assert v["text"] == (rec[key] if digits is None else htmlreport.cell_value(rec[key], digits))


def test_page_is_self_contained(page):
    text = page["html"].read_text(encoding="utf-8")
    for tag in ("<script", "<link", "<img", "<iframe", "@import", "@font-face", " src="):
        assert tag not in text, tag
    # the only URLs are the SVG namespaces (names, never fetched) and in-page references url(#id)
    assert set(re.findall(r"https?://[^\s\"')]+", text)) <= {"http://www.w3.org/2000/svg",
                                                               "http://www.w3.org/1999/xlink"}
    assert re.findall(r"url\((?!#)", text) == []
    # several SVGs on one page: ids are unique
    ids = re.findall(r'\bid="([^"]+)"', text)
    assert len(ids) == len(set(ids))
    # the five worst prompts per draft, coloured
    drafts = [d["draft"] for d in page["recommend"]["drafts"]]
    for d in drafts:
        section = re.search(rf'<section class="worst" data-draft="{re.escape(d)}">(.*?)</section>', text, re.S)
        assert section and section.group(1).count('<div class="prompt"') == 5


def test_png_per_plot(page):
    names = sorted(p.name for p in page["png"].iterdir())
    assert names == sorted(f"{n}.png" for n in expected_plots(page["recommend"]))
    for p in page["png"].iterdir():
        data = p.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
        assert oct(p.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_report_bad_output_paths(small_report, cli, tmp_path):
    r = cli("report", small_report, "--html", tmp_path / "missing" / "r.html")
    assert r.exit_code == 2
    assert r.stderr.strip() == (f"specprof: error: --html {tmp_path / 'missing' / 'r.html'}: directory "
                                f"{tmp_path / 'missing'} does not exist")
    (tmp_path / "file").write_text("x")
    r = cli("report", small_report, "--html", tmp_path / "r.html", "--png", tmp_path / "file")
    assert r.exit_code == 2 and "exists and is not a directory" in r.stderr
    assert not (tmp_path / "r.html").exists()


def test_page_has_the_glossary_the_policy_table_and_one_note_per_line(small_report, tmp_path, cli):
    # Busy-machine timings: t_T(2) = 3.6 × t_T(1). The costs line and its warning are two notes, not one run-on
    # paragraph; the threshold-policy table is recommend's; each definition is the glossary's.
    import html
    import shutil

    from specprof.core import glossary

    report = tmp_path / "busy"
    shutil.copytree(small_report, report)
    run = json.loads((report / "run.json").read_text())
    t1 = run["timings"]["target_forward_s"][0]
    run["timings"]["target_forward_s"] = [t1, 3.6 * t1] + [3.6 * t1] * (len(run["timings"]["target_forward_s"]) - 2)
    (report / "run.json").write_text(json.dumps(run))
    page, _ = htmlreport.build(report)
    notes = re.findall(r'<p class="note">(.*?)</p>', page)
    warning = [n for n in notes if n.startswith("warning:")]
    assert warning and warning[0] == html.escape(
        "warning: the measured verification times look disturbed (t_T(2) = 3.6× t_T(1)): the machine was probably "
        "busy while profiling; re-run profile on an idle machine (on a shared one, with OMP_NUM_THREADS=1) or plan "
        "with --cost-ratio", quote=True)
    assert all("warning:" not in n for n in notes if not n.startswith("warning:"))
    for name, column, definition in glossary.TERMS:
        assert f'<tr data-term="{column}"><td>{html.escape(name)}</td><td>{html.escape(definition, quote=True)}</td>' \
            in page, name
    rec = json.loads(cli("recommend", report, "--json").stdout)
    close = [r for r in rec["recommendations"] if r["threshold_policy"]]
    assert close  # the model draft has a policy; n-gram drafts do not
    table = re.search(r'<table class="policy" data-draft="([^"]+)">(.*?)</table>', page, re.S)
    assert table and table.group(1) == html.escape(close[0]["draft"])
    rows = re.findall(r'<tr(?: class="all")? data-domain="([^"]+)">(.*?)</tr>', table.group(2))
    assert [d for d, _ in rows] == [r["domain"] for r in close]
    for (_, cells), r in zip(rows, close):
        tds = re.findall(r"<td[^>]*>(.*?)</td>", cells)
        pol = r["threshold_policy"]
        assert (int(tds[1]), int(tds[3]), float(tds[4])) == (pol["fixed_k"], pol["k_max"], pol["tau"])
        assert tds[-1] == pol["verdict"]
    assert "ngram: an n-gram draft proposes with probability 1 or not at all: no threshold policy" in page
