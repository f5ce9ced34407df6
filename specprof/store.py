"""The output directory of a profile run: part files per finished batch, run.json, final tables.

Each finished batch is written as `parts/tokens-NNNNN.parquet` and `parts/prompts-NNNNN.parquet`,
then recorded in run.json's `completed_batches` and `completed_prompts`; both writes are atomic, so
a run killed at any moment keeps every recorded batch. `finish` writes the report tables
(tokens, prompts, summary, blocks), sets `finished_at`, and removes the parts.

No torch here.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from specprof import __version__, report, schema
from specprof.errors import SpecprofError

PARTS = "parts"
REPORT_FILES = (*report.FILES.values(), report.RUN_JSON)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class RunStore:
    def __init__(self, directory: Path, run: dict[str, Any]):
        self.directory = directory
        self.run = run

    @classmethod
    def create(cls, directory: str | Path, run_info: dict[str, Any], overwrite: bool = False) -> RunStore:
        """Start a new run in `directory`, refusing to clobber a non-empty one unless `overwrite`."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise SpecprofError(f"--out {directory}: exists and is not a directory")
        if directory.exists() and any(directory.iterdir()):
            if not overwrite:
                raise SpecprofError(
                    f"--out {directory}: directory is not empty; pass --overwrite to replace the report "
                    "or --resume to finish an interrupted run"
                )
            for name in REPORT_FILES:
                (directory / name).unlink(missing_ok=True)
            shutil.rmtree(directory / PARTS, ignore_errors=True)
        try:
            (directory / PARTS).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SpecprofError(f"--out {directory}: cannot create the directory ({e.strerror or e})") from None
        run = {
            "specprof_version": __version__,
            "schema_version": schema.SCHEMA_VERSION,
            **run_info,
            "started_at": now(),
            "finished_at": None,
            "completed_batches": [],
            "completed_prompts": [],
        }
        store = cls(directory, run)
        try:
            store._write_run()
        except OSError as e:
            raise SpecprofError(f"--out {directory}: cannot write ({e.strerror or e})") from None
        return store

    def _write_run(self) -> None:
        report.write_json(self.directory / report.RUN_JSON, self.run)

    def _part(self, name: str, index: int) -> Path:
        return self.directory / PARTS / f"{name}-{index:05d}.parquet"

    def append_batch(self, index: int, tokens: pd.DataFrame, prompts: pd.DataFrame) -> None:
        report.write_table(self._part("tokens", index), tokens, "tokens")
        report.write_table(self._part("prompts", index), prompts, "prompts")
        self.run["completed_batches"].append(index)
        self.run["completed_prompts"].extend(prompts["prompt_id"].tolist())
        self._write_run()

    def _concat(self, name: str) -> pa.Table:
        tables = [
            report.read_table(self._part(name, i), name) for i in sorted(self.run["completed_batches"])
        ]
        return pa.concat_tables(tables) if tables else report.to_table(pd.DataFrame(), name)

    def tokens(self) -> pd.DataFrame:
        return self._concat("tokens").to_pandas()

    def finish(self, summary: pd.DataFrame, blocks: pd.DataFrame, timings: Any) -> dict[str, Any]:
        """Write the final tables and mark the run finished; the parts are then removed."""
        for name in ("tokens", "prompts"):
            report.write_table(self.directory / report.FILES[name], self._concat(name), name)
        report.write_table(self.directory / report.FILES["summary"], summary, "summary")
        report.write_table(self.directory / report.FILES["blocks"], blocks, "blocks")
        self.run["timings"] = timings.as_dict()
        self.run["finished_at"] = now()
        self._write_run()
        shutil.rmtree(self.directory / PARTS, ignore_errors=True)
        return self.run
