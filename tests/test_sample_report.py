"""Every read command prints, byte for byte, what it printed before the code was restructured (issue 21).

tests/fixtures/sample-report/ holds a profile of the bundled corpus and, for each line of its
commands.txt, the stdout, stderr and exit code the commit before the restructuring gave (see its
README). The lines cover recommend (with a report, with filters and cost ratio, `--engine vllm`,
`--emit vllm|sglang`, the what-if), gate (thresholds, baseline, point), compare and inspect.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "sample-report"
LINES = [line for line in (FIXTURE / "commands.txt").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("n", range(1, len(LINES) + 1), ids=lambda n: f"{n:02d}-{LINES[n - 1].split()[0]}")
def test_read_command_prints_what_it_printed_before(n, cli, monkeypatch):
    monkeypatch.chdir(FIXTURE)
    monkeypatch.setenv("COLUMNS", "120")
    r = cli(*shlex.split(LINES[n - 1]))
    golden = FIXTURE / "golden" / f"{n:02d}"
    assert r.exit_code == int(Path(f"{golden}.rc").read_text()), r.output
    assert r.stdout == Path(f"{golden}.out").read_text()
    assert r.stderr == Path(f"{golden}.err").read_text()
