"""Regenerate the README's plot (docs/speedup-vs-k.png) from a profile of the bundled sample corpus.

    specprof profile sample_prompts/ --out /tmp/sample-report      # about 3 minutes on 2 CPU cores
    python scripts/make_readme_plot.py /tmp/sample-report

The plot is the one `specprof report --png` writes for the n-gram draft: expected
speedup against k per domain, empirical (with its interval) beside the i.i.d. model. Its numbers
depend on the machine the profile ran on (the measured forward times), so say which in the commit.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from specprof.core.answers import decide
from specprof.core.answers.analysis import load_analysis
from specprof.core.records import reportfiles
from specprof.ui import plots

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a report of sample_prompts/ (specprof profile --out DIR)")
    parser.add_argument("--draft", default="ngram", help="the draft to plot (default: ngram)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "speedup-vs-k.png")
    args = parser.parse_args()

    analysis = load_analysis(args.report, drafts=[args.draft])
    estimates = decide.estimates(analysis)  # the figures `recommend` and `report --html` show
    plot = plots.speedup_plot(estimates)
    reportfiles.write_file(args.out, plots.to_png(plot, dpi=90))
    run = analysis.run
    print(json.dumps({"out": str(args.out), "report": str(args.report), "draft": args.draft,
                      "device": run.get("device"), "n_prompts": (run.get("corpus") or {}).get("n_prompts")}))


if __name__ == "__main__":
    main()
