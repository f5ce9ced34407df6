"""Interrupted runs keep every finished batch, and --resume finishes them with identical rows.

Real `specprof` subprocesses on tiny models: one is killed with SIGKILL, one interrupted with
SIGINT (Ctrl-C); both are resumed and compared with an uninterrupted run of the same settings.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

# summary columns that depend on forward times measured during each run: they differ between any two runs
TIMED = ["speedup_iid", "speedup", "speedup_lo", "speedup_hi", "cost_ratio", "decision"]


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory) -> Path:
    rng = random.Random(7)
    alphabet = "abcdefghij klmnopqrstuvwxyz0123456789{}[]:,."
    lines = [
        json.dumps({"id": f"p{i:03d}", "domain": ["x", "y", "z"][i % 3],
                    "prompt": "".join(rng.choice(alphabet) for _ in range(rng.randint(3, 80)))})
        for i in range(60)
    ]
    path = tmp_path_factory.mktemp("big") / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e.get("PATH", "")
    return e


def args(corpus, tiny, out, *extra) -> list[str]:
    return ["profile", str(corpus), "--target", str(tiny["target"]), "--draft", str(tiny["close"]),
            "--draft", "ngram", "--k-max", "4", "--max-new-tokens", "40", "--batch-size", "2",
            "--out", str(out), *extra]


def start(argv):
    return subprocess.Popen([sys.executable, "-m", "specprof", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env())


def wait_for_batches(out: Path, proc, n: int) -> int:
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            done = len(json.loads((out / "run.json").read_text())["completed_batches"])
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= n:
            return done
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError("the run did not progress")


def run(argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "specprof", *argv], capture_output=True, text=True, env=env())


def frames(out: Path) -> dict[str, pd.DataFrame]:
    keys = {"tokens": ["draft", "prompt_id", "position"], "prompts": ["prompt_id"],
            "blocks": ["draft", "domain", "k", "accepted"], "summary": ["draft", "domain", "k"]}
    result = {}
    for name, key in keys.items():
        f = pd.read_parquet(out / f"{name}.parquet").sort_values(key).reset_index(drop=True)
        result[name] = f.drop(columns=TIMED) if name == "summary" else f
    return result


def assert_same_report(a: Path, b: Path) -> None:
    fa, fb = frames(a), frames(b)
    for name in fa:
        pd.testing.assert_frame_equal(fa[name], fb[name], check_exact=True, obj=name)


@pytest.fixture(scope="module")
def uninterrupted(big_corpus, tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "r"
    r = run(args(big_corpus, tiny, out))
    assert r.returncode == 0, r.stderr
    return out


def test_sigkill_then_resume_gives_identical_rows(big_corpus, tiny, tmp_path, uninterrupted):
    out = tmp_path / "r"
    proc = start(args(big_corpus, tiny, out))
    wait_for_batches(out, proc, 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["finished_at"] is None
    kept = set(run_json["completed_prompts"])
    assert 0 < len(kept) < 60
    assert (out / ".specprof.lock").exists()  # left by the killed process; must not block the resume

    r = run(args(big_corpus, tiny, out, "--resume"))
    assert r.returncode == 0, r.stderr
    assert_same_report(out, uninterrupted)
    run_json = json.loads((out / "run.json").read_text())
    assert sorted(run_json["completed_prompts"]) == sorted(set(run_json["completed_prompts"]))  # none twice
    assert not (out / ".specprof.lock").exists()


def test_ctrl_c_prints_a_resume_command_that_works_as_printed(big_corpus, tiny, tmp_path, uninterrupted):
    out = tmp_path / "r"
    proc = start(args(big_corpus, tiny, out))
    wait_for_batches(out, proc, 3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    command = stderr.split("resume with:")[1].strip().splitlines()[0]
    assert command.startswith("specprof profile ") and command.endswith(" --resume")
    r = subprocess.run(shlex.split(command), capture_output=True, text=True, env=env())
    assert r.returncode == 0, r.stderr
    assert_same_report(out, uninterrupted)


def test_resume_with_other_settings_is_refused(big_corpus, tiny, tmp_path):
    out = tmp_path / "r"
    proc = start(args(big_corpus, tiny, out))
    wait_for_batches(out, proc, 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = run([*args(big_corpus, tiny, out, "--resume")[:-1], "--k-max", "3", "--resume"])
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"specprof: error: --resume: the settings differ from the stored run in {out} "
        "(k_max: 4 before, 3 now); resume with the same options, or start over with --overwrite"
    )
    r = run(args(big_corpus, tiny, out))  # neither --resume nor --overwrite
    assert r.returncode == 2 and "--overwrite" in r.stderr and "Traceback" not in r.stderr


def test_second_writer_is_refused_and_a_stale_lock_is_taken_over(big_corpus, tiny, tmp_path):
    out = tmp_path / "r"
    proc = start(args(big_corpus, tiny, out))
    wait_for_batches(out, proc, 1)
    proc.send_signal(signal.SIGSTOP)  # alive but paused: it cannot finish before the second writer looks
    r = run(args(big_corpus, tiny, out, "--resume"))
    assert r.returncode == 2
    assert f"another specprof run (pid {proc.pid}) is writing this directory" in r.stderr
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = run(args(big_corpus, tiny, out, "--resume"))  # the lock's owner is dead now
    assert r.returncode == 0, r.stderr
