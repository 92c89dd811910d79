"""Result tables on disk: Parquet part files written atomically, one per batch, plus ``run.json``.

Layout of a run directory::

    run.json                      resolved spec, hash, versions, device, counts, status
    localization/part-00012.parquet
    agnosticism/part-00012.parquet
    _progress/00012.json          written last: batch 12 is complete in every table
    leaderboard.md

A batch counts as done only when its ``_progress`` marker exists; part files are written to a
temporary name and renamed, and a batch's parts always have the same names, so a batch that is
recomputed after a crash overwrites its own files: no row is ever lost or doubled. Readers use
``read_table``, which reads only batches with a marker.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from salbench.metrics.base import table_schema

TABLES = ("localization", "agnosticism")


def schema(name: str) -> pa.Schema:
    """The Parquet schema of table ``name``, derived from the metric registry (``salbench.metrics``)."""
    return table_schema(name)


def __getattr__(attr: str) -> Any:
    """``LOCALIZATION_SCHEMA``, ``AGNOSTICISM_SCHEMA`` and ``SCHEMAS``: live views of the registry,
    so a metric registered after import (a plugin, a test) is in the schema too."""
    if attr == "LOCALIZATION_SCHEMA":
        return schema("localization")
    if attr == "AGNOSTICISM_SCHEMA":
        return schema("agnosticism")
    if attr == "SCHEMAS":
        return {t: schema(t) for t in TABLES}
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Fill a fresh folder beside ``final`` (yielded), then swap it in with one rename.

    A ``final`` that exists (a forced rebuild, or a broken leftover) is moved aside first and
    deleted after the swap, so readers see the old folder or the new one, never a partial one.
    If the body raises, the temporary folder is deleted and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.parent / f".old-{final.name}-{os.getpid()}-{time.time_ns()}"
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_write_table(path: Path, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def part_name(unit: int) -> str:
    return f"part-{unit:05d}.parquet"


class RunWriter:
    """Writes one run directory's part files and completion markers."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def completed(self) -> set[int]:
        prog = self.run_dir / "_progress"
        if not prog.is_dir():
            return set()
        return {int(p.stem) for p in prog.glob("*.json") if p.stem.isdigit()}

    def clean_partial(self) -> int:
        """Remove temporary files and parts of batches without a marker (left by a crash)."""
        done = self.completed()
        removed = 0
        for table in TABLES:
            d = self.run_dir / table
            if not d.is_dir():
                continue
            for p in d.iterdir():
                unit = p.name.removeprefix("part-").removesuffix(".parquet")
                if p.name.endswith(".tmp") or (unit.isdigit() and int(unit) not in done):
                    p.unlink()
                    removed += 1
        return removed

    def write_unit(self, unit: int, tables: dict[str, pa.Table], info: dict[str, Any]) -> None:
        for name, table in tables.items():
            atomic_write_table(self.run_dir / name / part_name(unit), table.cast(schema(name)))
        atomic_write_json(self.run_dir / "_progress" / f"{unit:05d}.json", info)


def progress_info(run_dir: Path) -> list[dict[str, Any]]:
    prog = Path(run_dir) / "_progress"
    return [json.loads(p.read_text()) for p in sorted(prog.glob("*.json"))] if prog.is_dir() else []


def read_table(run_dir: str | Path, name: str, columns: Iterable[str] | None = None):
    """One table of a run as a pandas DataFrame: completed batches only, in batch order.

    Columns of the current schema that a part lacks (written before a metric was registered)
    come back as nulls of the schema's type, so readers need not know which version wrote a run.
    """
    run_dir = Path(run_dir)
    full = schema(name)
    wanted = list(columns) if columns is not None else full.names
    target = pa.schema([full.field(c) if c in full.names else pa.field(c, pa.null()) for c in wanted])
    done = RunWriter(run_dir).completed()
    files = [run_dir / name / part_name(u) for u in sorted(done) if (run_dir / name / part_name(u)).exists()]
    tables = [_conform(pq.read_table(f, columns=[c for c in wanted if c in pq.read_schema(f).names]), target) for f in files]
    return (pa.concat_tables(tables) if tables else target.empty_table()).to_pandas()


def _conform(table: pa.Table, target: pa.Schema) -> pa.Table:
    """``table`` with exactly ``target``'s columns, in order; missing ones null."""
    cols = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type) for f in target]
    return pa.Table.from_arrays(cols, schema=target)


def read_run_json(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        from salbench.errors import UsageError

        raise UsageError(f"{str(run_dir)!r} is not a salbench run directory (no run.json)")
    return json.loads(path.read_text())
