"""Result tables on disk: Parquet part files written atomically, one per batch, plus ``run.json``.

Layout of a run directory::

    run.json                      resolved spec, hash, versions, device, counts, status
    localization/part-00012.parquet
    agnosticism/part-00012.parquet
    example_images/part-00003.parquet, example_maps/part-00003.parquet
                                  only the batches holding the example images (salbench.examples)
    sanity/part-00000.parquet     only the batches holding the sanity checks' images (metrics/sanity.py)
    _progress/00012.json          written last: batch 12 is complete in every table
    leaderboard.md, ...           the report (``salbench report``; ``salbench run`` writes it at the end)

A batch counts as done only when its ``_progress`` marker exists; part files are written to a
temporary name and renamed, and a batch's parts always have the same names, so a batch that is
recomputed after a crash overwrites its own files: no row is ever lost or doubled. A marker holds
each part's size and sha256: ``read_table`` reads only batches with a marker and refuses a run
whose parts were truncated, altered or deleted afterwards (one line naming the batch), and
``--resume`` recomputes those batches.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from salbench.errors import UsageError
from salbench.metrics.base import TABLES as METRIC_TABLES
from salbench.metrics.base import table_schema
from salbench.store import atomic_directory, atomic_write_bytes, atomic_write_json  # noqa: F401  (re-exported: results.atomic_* keep working)

#: Tables a batch writes only when it has rows for them (``salbench.examples``; ``sanity``: the
#: sanity checks run on the first images of a run only).
SPARSE_TABLES = ("example_images", "example_maps", "sanity")
#: Tables of pixels, compressed harder (written once per run).
EXAMPLE_TABLES = ("example_images", "example_maps")
TABLES = tuple(dict.fromkeys((*METRIC_TABLES, *SPARSE_TABLES)))


def schema(name: str) -> pa.Schema:
    """The Parquet schema of table ``name``: metric tables derive from the registry (``salbench.metrics``)."""
    return _EXAMPLE_SCHEMAS[name] if name in _EXAMPLE_SCHEMAS else table_schema(name)

# The example tables (``salbench.examples``): a few images with every method's map, binary mask and
# inpainting fill, written only by the batches that hold those images.
EXAMPLE_IMAGES_SCHEMA = pa.schema(
    [
        ("image_index", pa.int64()),
        ("image_id", pa.string()),
        ("label", pa.int64()),
        ("class_name", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("image", pa.binary()),
        ("boxes", pa.list_(pa.list_(pa.float32(), 4))),
    ]
)

EXAMPLE_MAPS_SCHEMA = pa.schema(
    [
        ("image_index", pa.int64()),
        ("method", pa.string()),
        ("source_model", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("map", pa.binary()),
        ("mask", pa.binary()),
        ("fill", pa.binary()),
    ]
)
_EXAMPLE_SCHEMAS = {"example_images": EXAMPLE_IMAGES_SCHEMA, "example_maps": EXAMPLE_MAPS_SCHEMA}
#: zstd level of the example tables: pixels, written once per run, ~15% smaller than at the default.
EXAMPLE_COMPRESSION_LEVEL = 19


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


def atomic_write_table(path: Path, table: pa.Table, compression_level: int | None = None) -> None:
    atomic_write_bytes(path, table_bytes(table, compression_level))


def part_name(unit: int) -> str:
    return f"part-{unit:05d}.parquet"


class RunWriter:
    """Writes one run directory's part files and completion markers.

    A marker records, per table, the part's row count, size and sha256, so a part that was
    truncated, replaced or deleted after its batch completed is detected (``damaged_units``)
    instead of being read as a smaller, silently different table.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.repaired: dict[int, str] = {}

    def completed(self) -> set[int]:
        prog = self.run_dir / "_progress"
        if not prog.is_dir():
            return set()
        return {int(p.stem) for p in prog.glob("*.json") if p.stem.isdigit()}

    def clean_partial(self) -> int:
        """Before resuming: forget batches whose parts are damaged (they are recomputed, listed in
        ``self.repaired``), then remove temporary files and parts of batches without a marker."""
        self.repaired = damaged_units(self.run_dir)
        for unit in self.repaired:
            (self.run_dir / "_progress" / f"{unit:05d}.json").unlink(missing_ok=True)
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
        parts = {}
        for name, table in tables.items():
            if name in SPARSE_TABLES and table.num_rows == 0:
                continue
            data = table_bytes(table.cast(schema(name)), EXAMPLE_COMPRESSION_LEVEL if name in EXAMPLE_TABLES else None)
            atomic_write_bytes(self.run_dir / name / part_name(unit), data)
            parts[name] = {"rows": table.num_rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        atomic_write_json(self.run_dir / "_progress" / f"{unit:05d}.json", {**info, "parts": parts})


def table_bytes(table: pa.Table, compression_level: int | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", compression_level=compression_level)
    return sink.getvalue().to_pybytes()


def _marker(run_dir: Path, unit: int) -> dict[str, Any]:
    try:
        info = json.loads((run_dir / "_progress" / f"{unit:05d}.json").read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _part_problem(path: Path, expect: dict[str, Any] | None) -> str | None:
    """Why a completed batch's part cannot be trusted, or None."""
    if not path.is_file():
        return "missing"
    if expect and "sha256" in expect:
        data = path.read_bytes()
        if len(data) != expect.get("bytes") or hashlib.sha256(data).hexdigest() != expect["sha256"]:
            return f"changed since it was written ({len(data)} bytes, {expect.get('bytes')} written)"
        return None
    try:  # a marker from before checksums were recorded: at least the file must be whole Parquet
        pq.read_metadata(path)
    except Exception as exc:  # noqa: BLE001 (pyarrow raises several types for a truncated file)
        return f"unreadable ({type(exc).__name__})"
    return None


def damaged_units(run_dir: str | Path, tables: Iterable[str] = TABLES) -> dict[int, str]:
    """Completed batches whose part in any of ``tables`` is missing, truncated or altered: {unit: why}."""
    run_dir = Path(run_dir)
    out: dict[int, str] = {}
    for unit in sorted(RunWriter(run_dir).completed()):
        parts = _marker(run_dir, unit).get("parts")
        for name in tables:
            if name in SPARSE_TABLES and name not in (parts or {}):
                continue  # written only by batches that hold example images (all markers list their parts)
            why = _part_problem(run_dir / name / part_name(unit), (parts or {}).get(name))
            if why:
                out[unit] = f"its {name} part {part_name(unit)} is {why}"
                break
    return out


def check_complete(run_dir: str | Path, tables: Iterable[str] = TABLES) -> None:
    """Refuse (one-line UsageError) to read a run whose tables would silently miss rows: a damaged
    part of a completed batch, or a run marked complete with batches lacking their marker."""
    run_dir = Path(run_dir)
    resume = f"`salbench run --out {run_dir} --resume` recomputes it"
    damaged = damaged_units(run_dir, tables)
    if damaged:
        unit, why = next(iter(damaged.items()))
        more = f" (and {len(damaged) - 1} more batches)" if len(damaged) > 1 else ""
        raise UsageError(f"run {str(run_dir)!r}: batch {unit}: {why}{more}; {resume}")
    meta = _run_json(run_dir)
    expected = meta.get("num_batches") if meta.get("status") == "complete" else None
    if isinstance(expected, int):
        missing = sorted(set(range(expected)) - RunWriter(run_dir).completed())
        if missing:
            raise UsageError(f"run {str(run_dir)!r} says complete but batch {missing[0]} has no completion marker "
                             f"({len(missing)} of {expected} batches missing); {resume}")


class RunLock:
    """One process at a time per run directory: an exclusive ``flock`` on ``<run>/.lock`` held for
    the whole run, so a second ``salbench run`` on the same ``--out`` refuses with one line instead
    of interleaving its rows (the kernel drops the lock when a process dies, even by SIGKILL)."""

    NAME = ".lock"

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self._file = None
        self._created: list[Path] = []

    def acquire(self) -> None:
        # the folders this lock creates (run directory first), removed again if nothing is written
        self._created = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        f = open(self.run_dir / self.NAME, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise UsageError(f"run directory {str(self.run_dir)!r} is in use by another salbench run (pid {holder}); "
                             "wait for it to finish or choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f

    def release(self) -> None:
        """Drop the lock; a directory this lock created and nothing else wrote to is removed."""
        if self._file is None:
            return
        try:
            if self._created and is_empty_run_dir(self.run_dir):
                (self.run_dir / self.NAME).unlink(missing_ok=True)
                for folder in self._created:  # innermost first; stops at one another process wrote to
                    try:
                        folder.rmdir()
                    except OSError:
                        break
        finally:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def is_empty_run_dir(run_dir: Path) -> bool:
    """No file but (possibly) a lock left by a process that died before writing anything."""
    return not any(p.name != RunLock.NAME for p in run_dir.iterdir())


def progress_info(run_dir: Path) -> list[dict[str, Any]]:
    """Each completed batch's counts (its marker without the part checksums)."""
    prog = Path(run_dir) / "_progress"
    infos = [json.loads(p.read_text()) for p in sorted(prog.glob("*.json"))] if prog.is_dir() else []
    return [{k: v for k, v in info.items() if k != "parts"} for info in infos]


def read_table(run_dir: str | Path, name: str, columns: Iterable[str] | None = None):
    """One table of a run as a pandas DataFrame: completed batches only, in batch order.

    A damaged part or a missing batch of a complete run is refused (``check_complete``), never
    read as a smaller table. Columns of the current schema that a part lacks (written before a
    metric was registered) come back as nulls of the schema's type.
    """
    run_dir = Path(run_dir)
    check_complete(run_dir, (name,))
    full = schema(name)
    wanted = list(columns) if columns is not None else full.names
    target = pa.schema([full.field(c) if c in full.names else pa.field(c, pa.null()) for c in wanted])
    done = RunWriter(run_dir).completed()
    files = [run_dir / name / part_name(u) for u in sorted(done)]
    if name in SPARSE_TABLES:
        files = [f for f in files if f.is_file()]
    tables = [_conform(pq.read_table(f, columns=[c for c in wanted if c in pq.read_schema(f).names]), target) for f in files]
    return (pa.concat_tables(tables) if tables else target.empty_table()).to_pandas()


def _conform(table: pa.Table, target: pa.Schema) -> pa.Table:
    """``table`` with exactly ``target``'s columns, in order; missing ones null."""
    cols = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type) for f in target]
    return pa.Table.from_arrays(cols, schema=target)


def _run_json(run_dir: Path) -> dict[str, Any]:
    try:
        meta = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def read_run_json(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise UsageError(f"{str(run_dir)!r} is not a salbench run directory (no run.json)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{str(path)!r} is not valid JSON ({exc}); the run's tables are intact, its provenance is not") from None
    if not isinstance(meta, dict):
        raise UsageError(f"{str(path)!r} is not a salbench run.json (a JSON object)")
    return meta
