"""How fast `inspect` and `report --html` answer on a real report, against `recommend` on the same report.

Times, in fresh processes as a user runs them (Python start-up and imports included):
`specprof recommend --json` (the baseline: no tokenizer, no plots), `specprof inspect` (worst 5,
the tokenizer loaded), `specprof inspect --json`, and `specprof report --html` with and without
`--png`. Also how long loading the tokenizer takes in-process, and whether any command imported
torch. Neither command loads model weights, so none of this depends on the model's size.
Timings on a busy shared machine are unreliable: compare the ratios.

    specprof profile sample_prompts/ --out /tmp/sample-report    # once, a few minutes on a CPU
    python benchmarks/inspect_report_speed.py /tmp/sample-report [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from processes import wall

IMPORTS = ("torch", "transformers", "safetensors")


def heavy_imports(args: list[str]) -> list[str]:
    """Which of torch / transformers / safetensors a command imports (run in a fresh interpreter)."""
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom specprof.ui.cli import app\n"
        f"r = CliRunner().invoke(app, {args!r})\nassert r.exit_code == 0, r.output\n"
        f"print([m for m in {IMPORTS!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from specprof.core.records import reportfiles, tokentext

    run = reportfiles.load_report(args.report).run
    start = time.perf_counter()
    tokentext.load(run)
    tokenizer_s = time.perf_counter() - start

    exe = [sys.executable, "-m", "specprof"]
    rep = str(args.report)
    with tempfile.TemporaryDirectory() as tmp:
        page, pngs = str(Path(tmp) / "page.html"), str(Path(tmp) / "png")
        commands = {
            "recommend --json (baseline)": ["recommend", rep, "--json"],
            "inspect": ["inspect", rep],
            "inspect --json": ["inspect", rep, "--json"],
            "report --html": ["report", rep, "--html", page],
            "report --html --png": ["report", rep, "--html", page, "--png", pngs],
        }
        rows = {}
        for name, cmd in commands.items():
            seconds, code = wall(exe + cmd, args.repeats)
            if code != 0:
                raise SystemExit(f"{name}: exit code {code}")
            rows[name] = seconds
        page_bytes = Path(page).stat().st_size
        imported = {name: heavy_imports(commands[name]) for name in ("inspect", "report --html")}

    base = rows["recommend --json (baseline)"]
    print(f"report {rep} ({run.get('corpus', {}).get('n_prompts')} prompts, drafts "
          f"{', '.join(d['name'] for d in run.get('drafts', []))}); median of {args.repeats} fresh processes")
    print(f"{'command':<30}{'seconds':>10}{'× recommend':>14}")
    for name, seconds in rows.items():
        print(f"{name:<30}{seconds:>10.2f}{seconds / base:>14.2f}")
    print(f"tokenizer load (in-process): {tokenizer_s:.3f} s; page {page_bytes / 1e6:.2f} MB; "
          f"heavy imports: {imported}")
    print(json.dumps({"report": rep, "repeats": args.repeats, "seconds": rows, "tokenizer_load_s": tokenizer_s,
                      "page_bytes": page_bytes, "heavy_imports": imported}))


if __name__ == "__main__":
    main()
