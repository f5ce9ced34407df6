"""Progress on stderr for the long commands, and a clean stop on SIGTERM."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from specprof.ui.app import stderr


class progress_bar:
    """A Rich progress bar on stderr: prompts done, generated tokens per second, ETA."""

    def __init__(self, total: int, label: str = "profiling", unit: str = "prompts"):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(unit), TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(), console=stderr, transient=False,
        )
        self.task = self.progress.add_task("profile", total=total, rate="")

    def __enter__(self) -> Callable:
        self.progress.start()
        start = time.perf_counter()

        def update(p: Any) -> None:
            if hasattr(p, "done"):  # verify: generations done
                self.progress.update(self.task, completed=p.done)
                return
            rate = p.tokens_done / max(time.perf_counter() - start, 1e-9)
            self.progress.update(self.task, completed=p.prompts_done, rate=f"{rate:.0f} tok/s")

        return update

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()


class distill_bar:
    """Rich progress on stderr: generation and caching by prompts, then training with loss, held-out α, tokens/s."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), console=stderr, transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def _task(self, phase: str, total: float | None) -> Any:
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(phase, total=total, info="")
        return self.tasks[phase]

    def __enter__(self) -> Callable:
        # Started at the first event, not here: the command loads the target under its own status spinner
        # first, and Rich shows one live display at a time.
        def events(phase: str, **f: Any) -> None:
            if not self.progress.live.is_started:
                self.progress.start()
            if phase == "generate":
                self.progress.update(self._task("generating", f["total"]), completed=f["done"],
                                     info=f"{f['tokens']} tokens")
            elif phase == "cache":
                self.progress.update(self._task("caching", f["total"]), completed=f["done"], info="frozen layers")
            elif phase == "train":
                p = f["progress"]
                self.progress.update(
                    self._task("training", p.total_steps), completed=p.step,
                    info=f"loss {p.loss:.3f}  held-out α {p.heldout_alpha:.3f}  {p.tokens_per_s:.0f} tok/s",
                )
            elif phase == "save":
                self.progress.update(self._task("saving", 1), completed=f.get("done", 0), info="")
            elif phase == "notice":
                self.progress.console.print(f"[yellow]note:[/] {f['message']}", highlight=False)

        return events

    def __exit__(self, *exc: Any) -> None:
        if self.progress.live.is_started:
            self.progress.stop()


class interruptible:
    """Turn SIGTERM into KeyboardInterrupt for the duration, so both stop cleanly after the last saved batch."""

    def __enter__(self) -> None:
        import signal

        def stop(signum, frame):
            raise KeyboardInterrupt

        try:
            self.previous = signal.signal(signal.SIGTERM, stop)
        except ValueError:  # not the main thread
            self.previous = None

    def __exit__(self, *exc: Any) -> None:
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
