"""The output directory of a profile run: a lock, part files per finished batch, run.json, final tables.

Each finished batch is written as `parts/tokens-NNNNN.parquet`, `parts/prompts-NNNNN.parquet` (and
the past_end and proposals parts), then recorded in run.json's `completed_batches` and
`completed_prompts`. Every write is atomic
(temp file, fsync, rename), so a run killed at any moment — Ctrl-C, SIGTERM, kill -9, power loss —
keeps every recorded batch; a part written but not yet recorded is ignored and redone on resume.
`finish` writes the report tables (tokens, prompts, summary, blocks), sets `finished_at`, and
removes the parts.

`.specprof.lock` holds the writer's pid and host: a second run on the same directory is refused
while that process lives; a lock left by a dead process on this host is taken over.

No torch here.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from specprof import __version__
from specprof.core.records import reportfiles, schema
from specprof.errors import SpecprofError

PARTS = "parts"
LOCK = ".specprof.lock"
REPORT_FILES = (*reportfiles.FILES.values(), reportfiles.RUN_JSON)
PART_TABLES = ("tokens", "prompts", "past_end", "proposals")  # written per batch, joined by `finish`
# run.json entries a resumed run must share with the stored one, with the words used to name them.
IDENTITY = {
    "target": "target model",
    "drafts": "drafts",
    "device": "device",
    "dtype": "dtype",
    "settings": "settings",
    "corpus_fingerprint": "corpus",
}


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class RunLock:
    """An exclusive lock file in the output directory, taken with O_EXCL."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK
        self.held = False

    def acquire(self) -> None:
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now()})
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(record)
            self.held = True
            return
        raise SpecprofError(f"{self.path}: could not take the lock")

    def _clear_if_stale(self) -> None:
        try:
            owner = json.loads(self.path.read_text())
            pid, host = int(owner["pid"]), str(owner["host"])
        except (OSError, ValueError, KeyError, TypeError):
            pid, host = -1, socket.gethostname()  # unreadable: a writer died mid-write; treat as stale
        if host != socket.gethostname():
            raise SpecprofError(
                f"{self.path.parent}: locked by a specprof run on {host} (pid {pid}); "
                f"if no run is active there, delete {self.path}"
            )
        if pid > 0 and pid != os.getpid() and _pid_alive(pid):
            raise SpecprofError(
                f"{self.path.parent}: another specprof run (pid {pid}) is writing this directory; "
                "wait for it or use another --out"
            )
        self.path.unlink(missing_ok=True)  # the owner is gone: a stale lock does not block

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


class RunStore:
    def __init__(self, directory: Path, run: dict[str, Any], lock: RunLock | None = None):
        self.directory = directory
        self.run = run
        self.lock = lock

    @classmethod
    def create(cls, directory: str | Path, run_info: dict[str, Any], overwrite: bool = False) -> RunStore:
        """Start a new run in `directory`, refusing to clobber a non-empty one unless `overwrite`."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise SpecprofError(f"--out {directory}: exists and is not a directory")
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SpecprofError(f"--out {directory}: cannot create the directory ({e.strerror or e})") from None
        lock = RunLock(directory)
        lock.acquire()
        try:
            if any(p.name != LOCK for p in directory.iterdir()):
                if not overwrite:
                    raise SpecprofError(
                        f"--out {directory}: directory is not empty; pass --overwrite to replace the report "
                        "or --resume to finish an interrupted run"
                    )
                for name in REPORT_FILES:
                    (directory / name).unlink(missing_ok=True)
                shutil.rmtree(directory / PARTS, ignore_errors=True)
            run = {
                "specprof_version": __version__,
                "schema_version": schema.SCHEMA_VERSION,
                **run_info,
                "started_at": now(),
                "finished_at": None,
                "completed_batches": [],
                "completed_prompts": [],
            }
            store = cls(directory, run, lock)
            try:
                (directory / PARTS).mkdir(exist_ok=True)
                store._write_run()
            except OSError as e:
                raise SpecprofError(f"--out {directory}: cannot write ({e.strerror or e})") from None
        except BaseException:
            lock.release()
            raise
        return store

    @classmethod
    def resume(cls, directory: str | Path, run_info: dict[str, Any]) -> RunStore:
        """Reopen an interrupted run, refusing one made with other models, settings or corpus."""
        directory = Path(directory)
        run_path = directory / reportfiles.RUN_JSON
        if not run_path.exists():
            raise SpecprofError(f"--resume: {directory} holds no interrupted run (no {reportfiles.RUN_JSON})")
        stored = reportfiles.read_run(run_path)
        if stored.get("schema_version") != schema.SCHEMA_VERSION:
            raise SpecprofError(
                f"--resume: the run in {directory} was started by an older specprof (report schema "
                f"{stored.get('schema_version')}, now {schema.SCHEMA_VERSION}); start over with --overwrite"
            )
        for key, words in IDENTITY.items():
            if stored.get(key) != run_info.get(key):
                raise SpecprofError(
                    f"--resume: the {words} differ from the stored run in {directory} "
                    f"({describe_difference(stored.get(key), run_info.get(key))}); "
                    "resume with the same options, or start over with --overwrite"
                )
        lock = RunLock(directory)
        lock.acquire()
        store = cls(directory, stored, lock)
        recorded = {store._part(n, i).name for i in stored.get("completed_batches", []) for n in PART_TABLES}
        for part in (directory / PARTS).glob("*.parquet") if (directory / PARTS).exists() else []:
            if part.name not in recorded:
                part.unlink()  # written but never recorded: the batch is redone
        (directory / PARTS).mkdir(exist_ok=True)
        return store

    @property
    def finished(self) -> bool:
        return bool(self.run.get("finished_at"))

    @property
    def completed_batches(self) -> set[int]:
        return set(self.run["completed_batches"])

    def _write_run(self) -> None:
        reportfiles.write_json(self.directory / reportfiles.RUN_JSON, self.run)

    def update(self, **entries: Any) -> None:
        self.run.update(entries)
        self._write_run()

    def _part(self, name: str, index: int) -> Path:
        return self.directory / PARTS / f"{name}-{index:05d}.parquet"

    def append_batch(self, index: int, tables: dict[str, pd.DataFrame]) -> None:
        """Write one batch's rows of each `PART_TABLES` table, then record the batch as done."""
        for name in PART_TABLES:
            reportfiles.write_table(self._part(name, index), tables[name], name)
        self.run["completed_batches"].append(index)
        self.run["completed_prompts"].extend(tables["prompts"]["prompt_id"].tolist())
        self._write_run()

    def _concat(self, name: str) -> pa.Table:
        tables = [reportfiles.read_table(self._part(name, i), name) for i in sorted(self.run["completed_batches"])]
        return pa.concat_tables(tables) if tables else reportfiles.to_table(pd.DataFrame(), name)

    def tokens(self) -> pd.DataFrame:
        return self._concat("tokens").to_pandas()

    def table(self, name: str) -> pd.DataFrame:
        """The rows of one of `PART_TABLES` recorded so far."""
        return self._concat(name).to_pandas()

    def prompts(self) -> pd.DataFrame:
        return self._concat("prompts").to_pandas()

    def finish(self, summary: pd.DataFrame, blocks: pd.DataFrame, timings: Any) -> dict[str, Any]:
        """Write the final tables and mark the run finished; the parts are then removed."""
        for name in PART_TABLES:
            reportfiles.write_table(self.directory / reportfiles.FILES[name], self._concat(name), name)
        reportfiles.write_table(self.directory / reportfiles.FILES["summary"], summary, "summary")
        reportfiles.write_table(self.directory / reportfiles.FILES["blocks"], blocks, "blocks")
        self.run["timings"] = timings.as_dict() if timings is not None else None  # None: a remote engine's run
        self.run["finished_at"] = now()
        self._write_run()
        shutil.rmtree(self.directory / PARTS, ignore_errors=True)
        return self.run

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()


def describe_difference(old: Any, new: Any) -> str:
    """A short phrase naming the first difference between two run.json values."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return f"{key}: {_short(old.get(key))} before, {_short(new.get(key))} now"
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for a, b in zip(old, new):
            if a != b:
                return describe_difference(a, b)
    return f"{_short(old)} before, {_short(new)} now"


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."
