"""`specprof distill --arch eagle3`: flags already parsed by `run_commands.distill`; run and print."""

from __future__ import annotations

import time
from pathlib import Path

from specprof.core.vocabulary import EAGLE3
from specprof.errors import SpecprofError
from specprof.ui.app import check_range, quiet_transformers, stderr, stdout
from specprof.ui.progress import distill_bar


def distill_eagle3(arch: str, source: Path, out: Path, target: str | None, max_minutes: float, holdout: float,
                   seed: int, max_new_tokens: int | None, batch_size: int | None, no_chat_template: bool,
                   device: str, dtype: str, overwrite: bool, trust_remote_code: bool, allow_pickle: bool,
                   started: float) -> None:
    if arch != EAGLE3:
        raise SpecprofError(f"--arch {arch}: use early-exit or eagle3")
    check_range("--max-minutes", max_minutes, 0, lo_open=True)
    quiet_transformers()
    from specprof.commands import distill as distill_mod
    from specprof.commands.distill_eagle3 import distill_eagle3 as run
    from specprof.core.answers import distill_eval

    request = distill_mod.DistillRequest(
        source=source, out=out, layers=0, target=target, max_minutes=max_minutes, holdout=holdout, seed=seed,
        max_new_tokens=max_new_tokens, batch_size=batch_size, no_chat_template=no_chat_template, device=device,
        dtype=dtype, overwrite=overwrite, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    with distill_bar() as events:
        result = run(request, started=started, status=stderr.status, events=events)
    record = result.record
    held = record["data"]["heldout_prompts"]
    title = f"held-out α per domain ({held} prompts not trained on; before = the untrained head)"
    stdout.print(distill_eval.render_table(result.table, "untrained", title))
    stdout.print(f"{record['training']['steps']} steps in {(time.perf_counter() - started) / 60:.1f} min; head "
                 f"written to {out}/ (profile it with: specprof profile PROMPTS --draft eagle3:{out}; serve it with "
                 f"vLLM: {{\"method\": \"eagle3\", \"model\": \"{out}\"}})")
