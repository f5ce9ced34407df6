"""Time whole commands in fresh processes, as a CI job runs them (no torch: for the torch-free commands)."""

from __future__ import annotations

import statistics
import subprocess
import time


def wall(cmd: list[str], repeats: int) -> tuple[float, int]:
    """(median wall seconds over `repeats` runs of `cmd`, the last run's exit code)."""
    times, code = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        code = subprocess.run(cmd, capture_output=True).returncode
        times.append(time.perf_counter() - start)
    return statistics.median(times), code


def rounds(cmds: dict[str, list[str]], repeats: int) -> dict[str, tuple[list[float], int]]:
    """Each command once per round, `repeats` rounds: {name: (wall seconds per round, last exit code)}.

    Interleaved, so a stretch of load from other jobs on a shared machine slows every command of a
    round alike and a ratio taken within a round stays fair (time them one after another and the
    baseline may run in a quiet minute, the command in a busy one).
    """
    out: dict[str, tuple[list[float], int]] = {name: ([], 0) for name in cmds}
    for _ in range(repeats):
        for name, cmd in cmds.items():
            start = time.perf_counter()
            code = subprocess.run(cmd, capture_output=True).returncode
            out[name] = (out[name][0] + [time.perf_counter() - start], code)
    return out
