"""Is this vLLM's T > 0 verification meaningful? A probe of the CPU wheel's broken expand kernel.

vLLM 0.32.0's CPU build without Triton runs `vllm/utils/cpu_triton_utils.py::_expand_kernel_impl`
for `rejection_sampler.py: expand_batch_to_tokens`. It passes `_ensure_int64(output)`, an int64 COPY
of the float32 temperature buffer, to the C++ kernel and never copies it back: the target's
temperature during verification is uninitialised memory at every T > 0 step, and the engine's
sampled acceptance counters mean nothing (T = 0 never reaches this path). The probe runs the
function in the server's interpreter (with the server's environment, so a test's patch is seen):
`out = torch.full((3,), -5.0); _expand_kernel_impl(out, tensor([0.7]), tensor([3]), 0, 1)` leaves
out at -5 on the broken build.

No torch here: the probe is a subprocess of the vLLM interpreter.
"""

from __future__ import annotations

import os
import subprocess

FUNCTION = "vllm/utils/cpu_triton_utils.py::_expand_kernel_impl"
BROKEN_VERSIONS = ("0.32.0",)  # checked broken; later versions are probed, not assumed
BROKEN_LINE = (
    f"vLLM {{version}}'s CPU build computes the target's temperature with {FUNCTION}, which writes into an int64 "
    "copy and never copies back: the engine's T > 0 acceptance counters are not meaningful on this build "
    "(not specprof's error; see docs/sampling.md)"
)
EXTRA_PATH_ENV = "SPECPROF_VLLM_EXTRA_PYTHONPATH"  # prepended to the vLLM process's PYTHONPATH (tests' patches)

PROBE = """
import sys
try:
    import torch, vllm._C  # noqa: F401  the C++ ops the CPU kernels call
    from vllm.utils import cpu_triton_utils as m
    from vllm.triton_utils import HAS_TRITON
except Exception:
    print("absent"); sys.exit(0)
if HAS_TRITON:
    print("triton"); sys.exit(0)
out = torch.full((3,), -5.0)
m._expand_kernel_impl(out, torch.tensor([0.7]), torch.tensor([3], dtype=torch.int32), 0, 1)
print("broken" if float(out[0]) == -5.0 else "ok")
"""


def vllm_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a vLLM process gets: ours, with EXTRA_PATH_ENV's directories first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    extra = env.get(EXTRA_PATH_ENV)
    if extra:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra, env.get("PYTHONPATH", "")) if p)
    return env


def expand_kernel_broken(python: str, timeout_s: float = 180.0) -> bool | None:
    """True when `python`'s vLLM has the broken CPU expand kernel, False when it works (or Triton runs
    the real kernel), None when the probe could not tell."""
    try:
        done = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=timeout_s,
                              env=vllm_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    answer = (done.stdout.strip().splitlines() or [""])[-1]
    return {"broken": True, "ok": False, "triton": False}.get(answer)


def broken_note(version: str | None, broken: bool | None) -> str | None:
    """The one line for a broken build: probed broken, or (no probe: a --url server) a version known broken."""
    if broken or (broken is None and version in BROKEN_VERSIONS):
        return BROKEN_LINE.format(version=version or "?") + ("" if broken else " (if the server is the CPU build)")
    return None
