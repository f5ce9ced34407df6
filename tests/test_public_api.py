"""The Python API (`from specprof import load_report, recommend, ...`) answers what the CLI prints, without torch.

Each call runs in a fresh interpreter where importing torch raises ImportError (a meta-path finder
put first), and its `to_json()` must equal `json.loads` of the matching `specprof ... --json` run
through the real CLI on the same report: the bundled sample report and a tiny-model profile.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "sample-report"
REPORT = FIXTURE / "report"
TOKENIZER = FIXTURE / "tokenizer"

# Runs `calls` (a JSON list of [function, args, kwargs]) through the public API with torch unimportable,
# and prints each result's to_json() (an emission: its text and notes), then the heavy modules loaded.
SCRIPT = """
import json, sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None

sys.meta_path.insert(0, NoTorch())
import specprof
from specprof import load_report

out = []
for name, args, kwargs in json.loads(sys.argv[1]):
    if name in ("recommend", "gate", "emit", "inspect"):
        args = [load_report(args[0]), *args[1:]]
    result = getattr(specprof, name)(*args, **kwargs)
    out.append({"text": result.text, "notes": list(result.notes)} if name == "emit" else result.to_json())
print(json.dumps(out))
print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
"""


def api(*calls: tuple[str, list, dict]) -> list:
    r = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(calls)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    results, loaded = r.stdout.strip().splitlines()
    assert loaded == "[]"  # neither torch nor transformers was imported
    return json.loads(results)


def cli_json(cli, *args) -> dict:
    r = cli(*args, "--json")
    assert r.exit_code in (0, 1), r.output  # gate: 1 when a check fails
    return json.loads(r.stdout)


def test_recommend_on_the_sample_report_is_what_the_cli_prints(cli):
    report = str(REPORT)
    got = api(
        ("recommend", [report], {}),
        ("recommend", [report], {"cost_ratio": 0.2, "min_speedup": 1.0}),
        ("recommend", [report], {"draft": "early-exit:26", "domain": ["code", "json"]}),
        ("recommend", [report], {"engine": "vllm"}),
        ("recommend", [report], {"engine": "vllm", "draft": ["vllm-ngram"], "k": 3}),
    )
    assert got == [
        cli_json(cli, "recommend", report),
        cli_json(cli, "recommend", report, "--cost-ratio", "0.2", "--min-speedup", "1.0"),
        cli_json(cli, "recommend", report, "--draft", "early-exit:26", "--domain", "code", "--domain", "json"),
        cli_json(cli, "recommend", report, "--engine", "vllm"),
        cli_json(cli, "recommend", report, "--engine", "vllm", "--draft", "vllm-ngram", "--k", "3"),
    ]
    # the numbers a user reads, not only the same keys: the first entry's best k and speedup
    assert got[0]["recommendations"][0]["best_k"] >= 1 and got[0]["recommendations"][0]["speedup"] > 0


def test_gate_compare_inspect_what_if_on_the_sample_report_are_what_the_cli_prints(cli):
    report, tokenizer = str(REPORT), str(TOKENIZER)
    got = api(
        ("gate", [report], {"min_speedup": 1.0, "min_alpha": 0.3}),
        ("gate", [report], {"baseline": report, "max_alpha_drop": 0.05, "domain": ["code"]}),
        ("gate", [report], {"draft": ["vllm-ngram"], "k": 2, "point": True, "min_speedup": 0.9}),
        ("compare", [report, report], {}),
        ("inspect", [report], {"tokenizer": tokenizer}),
        ("inspect", [report], {"draft": "vllm-ngram", "worst": 3, "k": 2, "tokenizer": tokenizer}),
        ("what_if", [0.6, 0.1, 8], {}),
    )
    assert got == [
        cli_json(cli, "gate", report, "--min-speedup", "1.0", "--min-alpha", "0.3"),
        cli_json(cli, "gate", report, "--baseline", report, "--max-alpha-drop", "0.05", "--domain", "code"),
        cli_json(cli, "gate", report, "--draft", "vllm-ngram", "--k", "2", "--point", "--min-speedup", "0.9"),
        cli_json(cli, "compare", report, report),
        cli_json(cli, "inspect", report, "--tokenizer", tokenizer),
        cli_json(cli, "inspect", report, "--draft", "vllm-ngram", "--worst", "3", "--k", "2", "--tokenizer", tokenizer),
        cli_json(cli, "recommend", "--alpha", "0.6", "--cost-ratio", "0.1"),
    ]


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_emit_gives_the_config_and_notes_the_cli_prints(cli, engine):
    report = str(REPORT)
    draft, k = ("vllm-ngram", 3) if engine == "vllm" else ("early-exit:26", 2)
    (got,) = api(("emit", [report, engine], {"draft": [draft], "k": k}))
    r = cli("recommend", report, "--emit", engine, "--draft", draft, "--k", str(k))
    assert r.exit_code == 0, r.output
    assert got["text"] + "\n" == r.stdout
    assert [f"note: {n}" for n in got["notes"]] == r.stderr.splitlines()


def test_the_api_on_a_tiny_model_profile_is_what_the_cli_prints(small_report, cli):
    report = str(small_report)
    got = api(
        ("recommend", [report], {}),
        ("recommend", [report], {"engine": "vllm", "domain": "ALL"}),
        ("gate", [report], {"min_alpha": 0.0}),
        ("compare", [report, report], {}),
    )
    assert got == [
        cli_json(cli, "recommend", report),
        cli_json(cli, "recommend", report, "--engine", "vllm", "--domain", "ALL"),
        cli_json(cli, "gate", report, "--min-alpha", "0.0"),
        cli_json(cli, "compare", report, report),
    ]
    assert got[2]["passed"] is True  # α ≥ 0 always holds


def test_the_result_is_typed_and_importing_specprof_is_cheap():
    code = """
import sys
import specprof
cheap = sorted(m for m in ("numpy", "pyarrow", "pandas", "typer") if m in sys.modules)
from specprof import load_report, recommend
result = recommend(load_report(sys.argv[1]), draft="vllm-ngram", domain="code")
entry = result.entries[0]
print(cheap, type(result).__name__, entry.estimate.draft, entry.estimate.domain, len(result.entries))
try:
    specprof.no_such_thing
except AttributeError as e:
    print(e)
"""
    r = subprocess.run([sys.executable, "-c", code, str(REPORT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "[] Recommendation vllm-ngram code 1",  # one draft, one domain (no ALL under a domain filter)
        "module 'specprof' has no attribute 'no_such_thing'",
    ]


def test_bad_input_raises_specprof_error_with_the_cli_s_message():
    from specprof import SpecprofError, recommend

    with pytest.raises(SpecprofError, match=r"^--draft nope: not in "):
        recommend(REPORT, draft="nope")
    with pytest.raises(SpecprofError, match="^--k goes with --engine or --emit"):
        recommend(REPORT, k=2)
