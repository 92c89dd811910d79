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

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from salbench.store import atomic_directory, atomic_write_bytes, atomic_write_json  # noqa: F401  (re-exported: results.atomic_* keep working)

TABLES = ("localization", "agnosticism")

LOCALIZATION_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("dataset", pa.string()),
        ("image_index", pa.int64()),
        ("image_id", pa.string()),
        ("label", pa.int64()),
        ("method", pa.string()),
        ("source_model", pa.string()),
        ("binarize", pa.string()),
        ("box", pa.list_(pa.float32(), 4)),
        ("box_valid", pa.bool_()),
        ("le", pa.float32()),
        ("om", pa.float32()),
        ("f1", pa.float32()),
        ("precision", pa.float32()),
        ("recall", pa.float32()),
        ("area", pa.float32()),
        ("binary_area", pa.float32()),
        ("tv", pa.float32()),
        ("entropy", pa.float32()),
        ("target", pa.int64()),
        ("source_correct", pa.bool_()),
        ("error", pa.string()),
    ]
)

AGNOSTICISM_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("dataset", pa.string()),
        ("image_index", pa.int64()),
        ("image_id", pa.string()),
        ("label", pa.int64()),
        ("method", pa.string()),
        ("source_model", pa.string()),
        ("eval_model", pa.string()),
        ("variant", pa.string()),
        ("inpaint", pa.string()),
        ("top1", pa.float32()),
        ("top5", pa.float32()),
        ("ce", pa.float32()),
        ("entropy", pa.float32()),
        ("error", pa.string()),
    ]
)

SCHEMAS = {"localization": LOCALIZATION_SCHEMA, "agnosticism": AGNOSTICISM_SCHEMA}


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
            atomic_write_table(self.run_dir / name / part_name(unit), table.cast(SCHEMAS[name]))
        atomic_write_json(self.run_dir / "_progress" / f"{unit:05d}.json", info)


def progress_info(run_dir: Path) -> list[dict[str, Any]]:
    prog = Path(run_dir) / "_progress"
    return [json.loads(p.read_text()) for p in sorted(prog.glob("*.json"))] if prog.is_dir() else []


def read_table(run_dir: str | Path, name: str, columns: Iterable[str] | None = None):
    """One table of a run as a pandas DataFrame: completed batches only, in batch order."""
    import pandas as pd

    run_dir = Path(run_dir)
    done = RunWriter(run_dir).completed()
    files = [run_dir / name / part_name(u) for u in sorted(done) if (run_dir / name / part_name(u)).exists()]
    if not files:
        return SCHEMAS[name].empty_table().to_pandas() if columns is None else SCHEMAS[name].empty_table().select(list(columns)).to_pandas()
    tables = [pq.read_table(f, columns=list(columns) if columns else None) for f in files]
    return pa.concat_tables(tables).to_pandas() if tables else pd.DataFrame()


def read_run_json(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        from salbench.errors import UsageError

        raise UsageError(f"{str(run_dir)!r} is not a salbench run directory (no run.json)")
    return json.loads(path.read_text())
