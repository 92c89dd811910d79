"""The throughput table on disk: ``throughput.parquet``, its schema, merging and a text summary.

One row per measured configuration (``CONFIG_KEY``); measuring a configuration again replaces
its row. ``salbench compare`` joins two tables on ``CONFIG_KEY``.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from salbench.results import atomic_write_table

THROUGHPUT_FILE = "throughput.parquet"
KINDS = ("method", "pipeline", "forward", "forward_backward_baseline", "peer")

THROUGHPUT_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("kind", pa.string()),  # method | pipeline | forward | forward_backward_baseline | peer
        ("method", pa.string()),
        ("model", pa.string()),
        ("device", pa.string()),  # device name (GPU model, or CPU and thread count)
        ("device_type", pa.string()),  # cpu | cuda | mps
        ("dtype", pa.string()),  # autocast dtype (float32 = no autocast)
        ("batch_size", pa.int64()),
        ("image_size", pa.int64()),
        ("channels_last", pa.bool_()),
        ("compiled", pa.bool_()),
        ("eval_models", pa.int64()),  # pipeline: number of eval classifiers; else 0
        ("inpaint", pa.string()),  # pipeline: inpainting backend; else null
        ("images_per_s", pa.float64()),
        ("ms_per_batch", pa.float64()),  # median over the timed iterations
        ("ms_per_batch_min", pa.float64()),
        ("ms_per_batch_max", pa.float64()),
        ("peak_mem_mb", pa.float64()),
        ("mem_kind", pa.string()),  # cuda_max_allocated | cpu_peak_rss_delta | unavailable
        ("warmup", pa.int64()),
        ("iters", pa.int64()),
        ("notes", pa.string()),
        ("error", pa.string()),  # null when measured; else why not (not applicable, OOM, ...)
        ("versions", pa.string()),  # JSON object: salbench, torch, timm, ... versions
        ("timestamp", pa.string()),
    ]
)

#: Columns that identify one measured configuration (``compare`` joins on them).
CONFIG_KEY = ("kind", "method", "model", "device", "dtype", "batch_size", "image_size", "channels_last", "compiled", "eval_models", "inpaint")


def write_throughput(out_dir: str | Path, table: pa.Table) -> Path:
    """Write ``out_dir/throughput.parquet`` atomically, merging with an existing file: rows of
    this table replace earlier rows of the same configuration (``CONFIG_KEY``), others stay."""
    path = Path(out_dir) / THROUGHPUT_FILE
    table = table.cast(THROUGHPUT_SCHEMA)
    if path.exists():
        old = read_throughput(path.parent)
        new_keys = {tuple(r[k] for k in CONFIG_KEY) for r in table.select(list(CONFIG_KEY)).to_pylist()}
        keep = [i for i, r in enumerate(old.select(list(CONFIG_KEY)).to_pylist()) if tuple(r[k] for k in CONFIG_KEY) not in new_keys]
        table = pa.concat_tables([old.take(pa.array(keep, type=pa.int64())), table])
    atomic_write_table(path, table)
    return path


def read_throughput(run_dir: str | Path) -> pa.Table:
    """``throughput.parquet`` of a directory as an Arrow table with ``THROUGHPUT_SCHEMA``
    (columns missing from older files are filled with nulls)."""
    path = Path(run_dir) / THROUGHPUT_FILE
    t = pq.read_table(path)
    cols = []
    for f in THROUGHPUT_SCHEMA:
        cols.append(t.column(f.name).cast(f.type) if f.name in t.column_names else pa.nulls(t.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=THROUGHPUT_SCHEMA)


def format_table(table: pa.Table) -> str:
    """A plain-text summary, one line per row."""
    lines = [f"{'kind':<25} {'method':<16} {'model':<28} {'bs':>4} {'dtype':<8} {'cl':<2} {'cmp':<3} {'img/s':>9} {'ms/batch':>9} {'peak MB':>8}"]
    for r in table.to_pylist():
        kind = r["kind"] + (f"[{r['eval_models']} eval]" if r["kind"] == "pipeline" else "")
        head = f"{kind:<25} {r['method']:<16} {r['model']:<28} {r['batch_size']:>4} {r['dtype']:<8} {'y' if r['channels_last'] else 'n':<2} {'y' if r['compiled'] else 'n':<3}"
        if r["error"]:
            lines.append(f"{head} {'-':>9} {'-':>9} {'-':>8}  {r['error'][:80]}")
        else:
            lines.append(f"{head} {r['images_per_s']:>9.1f} {r['ms_per_batch']:>9.1f} {r['peak_mem_mb']:>8.1f}" + (f"  {r['notes']}" if r["notes"] else ""))
    return "\n".join(lines)
