"""Read and write a report directory atomically (docs/design.md §3).

Every file appears whole or not at all: it is written to a temporary file in the same directory,
flushed and fsynced, then renamed over the destination (rename is atomic on POSIX). Readers check
the schema version and the columns, and turn every problem into one `SpecprofError` line.

A report directory holds tokens.parquet, summary.parquet, blocks.parquet, prompts.parquet and
run.json. `run.json` has `finished_at` set only when the run completed.
No torch here.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from specprof.core.records import schema
from specprof.errors import SpecprofError

if TYPE_CHECKING:  # pandas loads only where a function needs it: the decision commands start faster
    import pandas as pd

RUN_JSON = "run.json"
FILES = {name: f"{name}.parquet" for name in schema.TABLES}


def atomic_write(path: Path, write: Any) -> None:
    """Call `write(file_object)` on a temp file beside `path`, fsync it, and rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # the permissions open() would give, not the temp file's private 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories
    finally:
        os.close(fd)


def write_json(path: Path, obj: Any) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()
    atomic_write(path, lambda f: f.write(data))


def to_table(frame: pd.DataFrame | pa.Table, name: str) -> pa.Table:
    """Cast rows to the named table's schema (column order and types) with the version in its metadata."""
    import pandas as pd

    target = schema.with_version(schema.TABLES[name])
    if isinstance(frame, pd.DataFrame):
        frame = frame.reindex(columns=target.names)
        return pa.Table.from_pandas(frame, schema=target, preserve_index=False)
    return frame.select(target.names).cast(target)


def write_table(path: Path, frame: pd.DataFrame | pa.Table, name: str) -> None:
    table = to_table(frame, name)
    atomic_write(path, lambda f: pq.write_table(table, f, compression="zstd"))


def read_table(
    path: Path, name: str, columns: list[str] | None = None, read_dictionary: list[str] | None = None
) -> pa.Table:
    """Read one report table, checking it is ours, not from the future, and has the columns we need.

    `read_dictionary` names string columns to read dictionary-encoded (pandas categoricals): much
    faster for the few distinct drafts, domains and prompt ids of a large tokens table.
    """
    try:
        file = pq.ParquetFile(path)
    except FileNotFoundError:
        raise SpecprofError(f"{path}: missing; is this a specprof report directory?") from None
    except Exception as e:
        raise SpecprofError(f"{path}: not a readable parquet file ({e})") from None
    schema.check_version(file.schema_arrow.metadata, str(path))
    expected = [c for c in schema.TABLES[name].names if c not in schema.ADDED_IN_3]  # older versions lack them
    missing = [c for c in (columns or expected) if c not in file.schema_arrow.names]
    if missing:
        raise SpecprofError(f"{path}: missing column {missing[0]!r}; not a specprof {name} table")
    try:
        if read_dictionary:  # only once the columns are known to exist (pyarrow raises KeyError otherwise)
            file = pq.ParquetFile(path, read_dictionary=read_dictionary)
        return file.read(columns=columns)
    except Exception as e:
        raise SpecprofError(f"{path}: cannot read ({e})") from None


@dataclass(frozen=True)
class Report:
    directory: Path
    run: dict[str, Any]

    def path(self, name: str) -> Path:
        return self.directory / FILES[name]

    def table(
        self, name: str, columns: list[str] | None = None, read_dictionary: list[str] | None = None
    ) -> pa.Table:
        return read_table(self.path(name), name, columns, read_dictionary)

    def frame(self, name: str, columns: list[str] | None = None) -> pd.DataFrame:
        return self.table(name, columns).to_pandas()


def find_report_dir(path: str | Path) -> Path:
    """Accept the report directory or one of its files (summary.parquet, tokens.parquet, run.json)."""
    path = Path(path)
    if not path.exists():
        raise SpecprofError(f"{path}: no such report directory or file")
    return path if path.is_dir() else path.parent


def read_run(run_path: Path) -> dict[str, Any]:
    """run.json as a dict, refusing an unreadable file, a foreign one or a future schema version."""
    try:
        run = json.loads(run_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SpecprofError(f"{run_path}: unreadable ({e})") from None
    if not isinstance(run, dict) or "schema_version" not in run:
        raise SpecprofError(f"{run_path}: not a specprof run record (no schema_version)")
    schema.check_version({schema.VERSION_KEY: str(run["schema_version"]).encode()}, str(run_path))
    return run


def load_report(path: str | Path) -> Report:
    directory = find_report_dir(path)
    run_path = directory / RUN_JSON
    if not run_path.exists():
        raise SpecprofError(f"{directory}: not a specprof report (no {RUN_JSON})")
    run = read_run(run_path)
    if not run.get("finished_at"):
        raise SpecprofError(
            f"{directory}: the profile run did not finish (half-written report); "
            "finish it with `specprof profile … --resume`"
        )
    if not (directory / FILES["tokens"]).exists():
        raise SpecprofError(f"{directory}: {FILES['tokens']} is missing; the report is incomplete")
    return Report(directory, run)


def write_file(path: Path, data: bytes) -> None:
    """Write a file for people to open (a page, a plot, a corpus) atomically."""
    path = Path(path)
    atomic_write(path, lambda f: f.write(data))
