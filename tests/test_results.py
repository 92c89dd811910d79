"""Run directories on disk: a part that was truncated, altered or deleted after its batch completed
is refused by readers (one line, never a smaller table) and recomputed by ``--resume``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from salbench.cli import main
from salbench.compare import compare_runs
from salbench.errors import UsageError
from salbench.results import RunWriter, check_complete, damaged_units, part_name, read_table
from test_compare import _spec, _tables


def make_run(path: Path, status: str = "complete") -> Path:
    """Two batches of the compare fixture's rows (images 0-9 and 10-19)."""
    path.mkdir(parents=True)
    loc, agn = _tables()
    w = RunWriter(path)
    for unit in (0, 1):
        keep = lambda t: t.filter(pd.Series(t.column("image_index").to_pylist()).between(10 * unit, 10 * unit + 9).to_numpy())  # noqa: E731
        w.write_unit(unit, {"localization": keep(loc), "agnosticism": keep(agn)}, {"unit": unit, "images": 10})
    (path / "run.json").write_text(json.dumps({"run_id": "r", "hash": "h", "spec": _spec(), "status": status, "num_batches": 2}))
    return path


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


@pytest.mark.parametrize("damage", ["truncate", "delete", "replace"])
def test_a_damaged_part_is_refused_with_one_line(tmp_path, damage):
    run = make_run(tmp_path / "r")
    part = run / "localization" / part_name(1)
    if damage == "truncate":
        _truncate(part)
    elif damage == "delete":
        part.unlink()
    else:  # a whole, valid Parquet file with other rows: only the checksum can tell
        (run / "localization" / part_name(0)).replace(part)
        RunWriter(run).write_unit(0, {"localization": _tables()[0].slice(0, 10), "agnosticism": _tables()[1].slice(0, 80)}, {"unit": 0})
    assert list(damaged_units(run)) == [1]
    with pytest.raises(UsageError, match=r"batch 1: its localization part part-00001.parquet is .*--resume"):
        read_table(run, "localization")
    if damage != "replace":  # the other table is intact and still readable
        assert len(read_table(run, "agnosticism")) == 20 * 2 * 2 * 2 * 4
    with pytest.raises(UsageError, match="batch 1"):
        compare_runs(run, make_run(tmp_path / "ok"))
    res = CliRunner().invoke(main, ["report", str(run), "--out", str(tmp_path / "rep"), "--no-qualitative"])
    assert res.exit_code == 2 and "batch 1" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "rep" / "leaderboard.md").exists()


def test_a_complete_run_missing_a_batch_is_refused(tmp_path):
    run = make_run(tmp_path / "r")
    (run / "_progress" / "00001.json").unlink()
    (run / "localization" / part_name(1)).unlink()
    with pytest.raises(UsageError, match="says complete but batch 1 has no completion marker"):
        check_complete(run)
    running = make_run(tmp_path / "running", status="running")
    (running / "_progress" / "00001.json").unlink()
    assert len(read_table(running, "localization")) == 10 * 4  # an unfinished run reads what finished


def test_resume_preparation_forgets_damaged_batches(tmp_path):
    run = make_run(tmp_path / "r")
    _truncate(run / "agnosticism" / part_name(0))
    w = RunWriter(run)
    w.clean_partial()
    assert list(w.repaired) == [0] and w.completed() == {1}
    assert not (run / "agnosticism" / part_name(0)).exists() and not (run / "localization" / part_name(0)).exists()
    assert damaged_units(run) == {}
    with pytest.raises(UsageError, match="batch 0 has no completion marker"):  # until the resumed run recomputes it
        read_table(run, "localization")


def test_compare_flags_an_incomplete_new_run_and_refuses_an_incomplete_old_one(tmp_path):
    ok = make_run(tmp_path / "ok")
    crashed = make_run(tmp_path / "crashed", status="running")
    cmp = compare_runs(ok, crashed)
    assert not cmp.ok and any(c.table == "run" and "incomplete" in c.verdict for c in cmp.regressions)
    with pytest.raises(UsageError, match="not complete"):
        compare_runs(crashed, ok)


@pytest.mark.slow
def test_resume_recomputes_a_truncated_part_and_ends_with_the_same_tables(tmp_path):
    from salbench import zoo
    from salbench.config import RunSpec
    from salbench.runner import run
    from testutils import tiny_resnet_recipe

    zoo.register_recipe(tiny_resnet_recipe("results-resume", seed=8), replace=True)
    spec = RunSpec(dataset="synthetic?n=12&size=32&classes=4", models=["zoo:results-resume"], methods=["gradient", "centre"],
                   batch_size=4, device="cpu")
    out = tmp_path / "r"
    run(spec, out, progress=False)
    before = {t: read_table(out, t) for t in ("localization", "agnosticism")}
    _truncate(out / "agnosticism" / part_name(1))
    with pytest.raises(UsageError, match="batch 1"):
        read_table(out, "agnosticism")
    run(spec, out, resume=True, progress=False)
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "complete"
    for t, df in before.items():
        pd.testing.assert_frame_equal(read_table(out, t), df)


def test_run_lock_is_exclusive_and_leaves_no_empty_directory(tmp_path):
    from salbench.results import RunLock

    a = RunLock(tmp_path / "results" / "r")
    a.acquire()
    with pytest.raises(UsageError, match=r"in use by another salbench run \(pid \d+\)"):
        RunLock(tmp_path / "results" / "r").acquire()
    a.release()
    assert not (tmp_path / "results").exists()  # created by the lock (parents too), nothing written: gone
    b = RunLock(tmp_path / "r")
    b.acquire()
    (tmp_path / "r" / "run.json").write_text("{}")
    b.release()
    assert (tmp_path / "r" / "run.json").exists()
    c = RunLock(tmp_path / "r")
    c.acquire()  # free again
    c.release()
