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
