"""``salbench compare``: identical runs pass, perturbed metrics / throughput fail, bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from salbench.cli_perf import compare
from salbench.compare import compare_runs, metric_means
from salbench.results import AGNOSTICISM_SCHEMA, LOCALIZATION_SCHEMA, RunWriter, atomic_write_json
from salbench.throughput import THROUGHPUT_SCHEMA, write_throughput

METHODS = ("gradcam", "gradient")
SOURCES = ("zoo:a", "zoo:b")
N_IMAGES = 20


def _spec(**changes):
    spec = {
        "dataset": "synthetic?n=20",
        "protocol": {"dataset": "synthetic?n=20", "image_size": [64, 64], "num_classes": 10},
        "num_images": N_IMAGES,
        "binarize": "mean_area",
        "binarize_params": {},
        "box": "largest",
        "inpaint": "telea",
        "target": "label",
        "method_configs": {m: {"name": m, "params": {}} for m in METHODS},
    }
    spec.update(changes)
    return spec


def _tables(perturb: dict | None = None):
    """Deterministic localization / agnosticism rows; ``perturb`` flips some per-image values."""
    perturb = perturb or {}
    loc: dict[str, list] = {f.name: [] for f in LOCALIZATION_SCHEMA}
    agn: dict[str, list] = {f.name: [] for f in AGNOSTICISM_SCHEMA}
    for mi, method in enumerate(METHODS):
        for si, src in enumerate(SOURCES):
            for i in range(N_IMAGES):
                le = float((i + mi + si) % 3 == 0)
                if perturb.get(("le", method, src)) and i < perturb[("le", method, src)]:
                    le = 1.0 - le
                row = dict(run_id="r", dataset="synthetic?n=20", image_index=i, image_id=f"{i:05d}", label=i % 10, method=method,
                           source_model=src, binarize="mean_area", box=[0.0, 0.0, 10.0, 10.0], box_valid=True, le=le, om=le,
                           f1=0.25 + 0.01 * i, deletion_auc=0.2 + 0.01 * (i % 4), precision=0.5, recall=0.5, area=0.3, binary_area=0.3, tv=0.01, entropy=0.1,
                           target=i % 10, source_correct=True, error=None)
                for k in loc:
                    loc[k].append(row.get(k))
                for ev in SOURCES:
                    for variant in ("original", "masked_in", "masked_out", "inpainted"):
                        top1 = float((i + len(variant) + mi) % 2 == 0)
                        r = dict(run_id="r", dataset="synthetic?n=20", image_index=i, image_id=f"{i:05d}", label=i % 10, method=method,
                                 source_model=src, eval_model=ev, variant=variant, inpaint="telea", top1=top1, top5=1.0, ce=1.0,
                                 entropy=1.0, error=None)
                        for k in agn:
                            agn[k].append(r.get(k))
    return pa.table(loc, schema=LOCALIZATION_SCHEMA), pa.table(agn, schema=AGNOSTICISM_SCHEMA)


def make_run(path: Path, perturb: dict | None = None, spec: dict | None = None, throughput: list[float] | None = None) -> Path:
    path.mkdir(parents=True)
    loc, agn = _tables(perturb)
    RunWriter(path).write_unit(0, {"localization": loc, "agnosticism": agn}, {"unit": 0, "images": N_IMAGES, "maps": 80, "errors": 0})
    atomic_write_json(path / "run.json", {"run_id": "r", "hash": "h", "spec": spec or _spec(), "status": "complete"})
    if throughput is not None:
        write_throughput(path, _throughput_table(throughput))
    return path


def _throughput_table(ips: list[float], errors: list[str | None] | None = None) -> pa.Table:
    rows = []
    for i, v in enumerate(ips):
        rows.append(dict(run_id="t", kind="method", method=METHODS[i % 2], model="random:resnet18", device="cpu (x86_64, 2 threads)",
                         device_type="cpu", dtype="float32", batch_size=8 * (1 + i // 2), image_size=224, channels_last=False, compiled=False,
                         eval_models=0, inpaint=None, images_per_s=v, ms_per_batch=8 * (1 + i // 2) / v * 1e3, ms_per_batch_min=1.0,
                         ms_per_batch_max=2.0, peak_mem_mb=10.0, mem_kind="cpu_peak_rss_delta", warmup=1, iters=3, notes=None,
                         error=(errors or [None] * len(ips))[i], versions="{}", timestamp="2025-01-01T00:00:00+00:00"))
    return pa.Table.from_pylist(rows, schema=THROUGHPUT_SCHEMA)


def _cli(*args):
    return CliRunner().invoke(compare, [str(a) for a in args])


def test_identical_runs_exit_0(tmp_path):
    a = make_run(tmp_path / "a", throughput=[100.0, 50.0, 90.0, 40.0])
    b = make_run(tmp_path / "b", throughput=[100.0, 50.0, 90.0, 40.0])
    res = _cli(a, b)
    assert res.exit_code == 0, res.output
    assert "OK:" in res.output and "4 throughput configurations" in res.output
    cmp = compare_runs(a, b)
    assert cmp.ok and all(c.change == 0 for c in cmp.changes)


def test_metric_means_are_percent_per_method_and_source(tmp_path):
    a = make_run(tmp_path / "a")
    df = metric_means(a)
    assert set(df.index) == {(m, s) for m in METHODS for s in SOURCES}
    assert {"le", "om", "f1", "masked_in_top1", "masked_out_top1", "inpainted_top1", "original_top1", "errors"} <= set(df.columns)
    assert df["f1"].between(0, 100).all() and (df["errors"] == 0).all()


def test_metric_moved_beyond_tolerance_exits_1(tmp_path):
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", perturb={("le", "gradcam", "zoo:a"): 1})  # 1 of 20 images flips: 5 pp
    res = _cli(a, b, "--metric-tol", "0.5")
    assert res.exit_code == 1, res.output
    assert "REGRESSED" in res.output
    lines = [ln.split() for ln in res.output.splitlines() if ln.startswith("localization")]
    assert sorted(ln[4] for ln in lines) == ["le", "om"]  # OM follows LE (source always right)
    assert all(ln[1:4] == ["gradcam", "/", "zoo:a"] and ln[7] == "-5.00" for ln in lines)
    # a looser tolerance accepts the same move
    assert _cli(a, b, "--metric-tol", "6").exit_code == 0


def test_throughput_drop_beyond_limit_exits_1(tmp_path):
    a = make_run(tmp_path / "a", throughput=[100.0, 50.0])
    b = make_run(tmp_path / "b", throughput=[80.0, 55.0])  # gradcam -20 %, gradient +10 %
    res = _cli(a, b, "--throughput-drop", "10")
    assert res.exit_code == 1, res.output
    assert "throughput" in res.output and "-20.00 %" in res.output
    assert _cli(a, b, "--throughput-drop", "25").exit_code == 0


def test_throughput_only_directories(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_throughput(a, _throughput_table([100.0, 50.0]))
    write_throughput(b, _throughput_table([99.0, 50.0], errors=[None, "OutOfMemoryError: boom"]))
    cmp = compare_runs(a, b)
    assert [c.verdict.split(":")[0] for c in cmp.regressions] == ["failing"]
    assert _cli(a, b).exit_code == 1


def test_different_protocol_refused(tmp_path):
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", spec=_spec(inpaint="pushpull"))
    res = _cli(a, b)
    assert res.exit_code == 2
    assert "different protocols" in res.output and "inpaint" in res.output
    c = make_run(tmp_path / "c", spec=_spec(binarize="alpha_mean"))
    assert "binarize" in _cli(a, c).output


@pytest.mark.parametrize("bad", ["missing", "file", "empty"])
def test_bad_directory_exits_2_with_one_line(tmp_path, bad):
    a = make_run(tmp_path / "a")
    target = tmp_path / bad
    if bad == "file":
        target.write_text("x")
    elif bad == "empty":
        target.mkdir()
    res = _cli(a, target)
    assert res.exit_code == 2
    assert len(res.output.strip().splitlines()) == 1 and str(target) in res.output


def test_missing_pair_and_extra_errors_regress(tmp_path):
    a = make_run(tmp_path / "a")
    b = tmp_path / "b"
    b.mkdir()
    loc, agn = _tables()
    keep = pa.compute.not_equal(loc.column("method"), "gradient")
    loc = loc.filter(keep)
    errs = loc.column("error").to_pylist()
    errs[0] = "RuntimeError: boom"
    loc = loc.set_column(loc.schema.get_field_index("error"), "error", pa.array(errs, pa.string()))
    agn = agn.filter(pa.compute.not_equal(agn.column("method"), "gradient"))
    RunWriter(b).write_unit(0, {"localization": loc, "agnosticism": agn}, {"unit": 0})
    atomic_write_json(b / "run.json", {"run_id": "r", "spec": _spec(), "status": "complete"})
    cmp = compare_runs(a, b, metric_tol=100)
    verdicts = {(c.table, c.key, c.verdict) for c in cmp.regressions}
    assert ("pairs", "gradient / zoo:a", "missing in NEW") in verdicts
    assert any(t == "errors" and k == "gradcam / zoo:a" for t, k, _ in verdicts)


def test_nothing_in_common_exits_2(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_throughput(a, _throughput_table([100.0]))
    other = _throughput_table([100.0])
    other = other.set_column(other.schema.get_field_index("device"), "device", pa.array(["NVIDIA H100"], pa.string()))
    write_throughput(b, other)
    res = _cli(a, b)
    assert res.exit_code == 2 and "nothing to compare" in res.output and "NVIDIA H100" in res.output


def test_a_metric_new_in_new_is_reported_not_a_regression_and_a_vanished_one_is(tmp_path):
    """Adding a metric must not fail the gate against an older baseline; losing one must."""
    import pyarrow.parquet as pq

    from salbench.results import table_bytes

    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b")
    part = a / "localization" / "part-00000.parquet"
    t = pq.read_table(part)
    t = t.drop_columns(["mask_energy"]) if "mask_energy" in t.column_names else t
    t = t.set_column(t.schema.get_field_index("f1"), "f1", pa.nulls(len(t), pa.float32()))  # OLD never measured f1
    data = table_bytes(t)
    part.write_bytes(data)
    import hashlib
    import json

    marker = a / "_progress" / "00000.json"
    info = json.loads(marker.read_text())
    info["parts"]["localization"] = {"rows": t.num_rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    marker.write_text(json.dumps(info))
    cmp = compare_runs(a, b)
    new = [c for c in cmp.changes if c.metric == "f1"]
    assert new and all(c.verdict == "new metric" and not c.regressed for c in new)
    assert cmp.ok
    back = compare_runs(b, a)
    assert not back.ok and any(c.metric == "f1" and c.verdict == "missing in NEW" for c in back.regressions)


# ---------------------------------------------------------------- guarded references
def _reference(tmp_path: Path, run: Path, name: str = "ref") -> Path:
    from salbench.cli_perf import reference

    res = CliRunner().invoke(reference, [str(run), str(tmp_path / name)])
    assert res.exit_code == 0, res.output
    return tmp_path / name


def _edit_first_row(ref: Path, edit) -> list[dict]:
    """Rewrite a reference's leaderboard with ``edit`` applied to its first row; the rows."""
    rows = json.loads((ref / "leaderboard.json").read_text())
    edit(rows[0])
    (ref / "leaderboard.json").write_text(json.dumps(rows))
    return rows


def test_a_reference_holds_the_summary_not_the_rows_and_passes_against_its_own_run(tmp_path):
    run = make_run(tmp_path / "a")
    ref = _reference(tmp_path, run)
    assert sorted(p.name for p in ref.iterdir()) == ["leaderboard.json", "run.json"]  # no Parquet rows
    assert json.loads((ref / "run.json").read_text())["reference"] is True
    res = _cli(ref, run)
    assert res.exit_code == 0, res.output
    assert "OK:" in res.output


def test_a_run_that_moves_a_number_fails_against_the_reference_with_what_moved(tmp_path):
    ref = _reference(tmp_path, make_run(tmp_path / "a"))
    moved = make_run(tmp_path / "b", perturb={("le", "gradcam", "zoo:a"): 1})  # 1 of 20 images flips: 5 pp
    res = _cli(ref, moved, "--metric-tol", "1")
    assert res.exit_code == 1 and "REGRESSED" in res.output
    rows = [ln.split() for ln in res.output.splitlines() if ln.startswith("localization")]
    assert {r[4] for r in rows} == {"le", "om"} and all(r[1:4] == ["gradcam", "/", "zoo:a"] for r in rows)
    # the reference's own 95% interval scales the tolerance: 5 pp is inside 1.0x the LE half-width here
    half = {r["method"] + r["source_model"]: (r["le_hi"] - r["le_lo"]) / 2 for r in json.loads((ref / "leaderboard.json").read_text())}
    assert half["gradcamzoo:a"] > 5 > 0.1 * half["gradcamzoo:a"]
    assert _cli(ref, moved, "--metric-tol", "1", "--ci-tol", "1").exit_code == 0
    assert _cli(ref, moved, "--metric-tol", "1", "--ci-tol", "0.1").exit_code == 1


def test_a_perturbed_reference_value_fails_the_gate(tmp_path):
    """What CI's reference step does when a number moves: one value of the committed summary
    perturbed by 3 pp, the same run now fails."""
    run = make_run(tmp_path / "a")
    ref = _reference(tmp_path, run)
    _edit_first_row(ref, lambda r: r.update(f1=r["f1"] + 3.0))
    res = _cli(ref, run, "--metric-tol", "1")
    assert res.exit_code == 1
    assert any(ln.startswith("localization") and " f1 " in f" {ln} " for ln in res.output.splitlines())


def test_reference_of_an_incomplete_run_is_refused(tmp_path):
    from salbench.cli_perf import reference

    run = make_run(tmp_path / "a")
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "status": "running"}))
    res = CliRunner().invoke(reference, [str(run), str(tmp_path / "ref")])
    assert res.exit_code == 2 and "not a complete run" in res.output and not (tmp_path / "ref").exists()


def test_unitless_scores_move_by_the_same_share_of_their_range(tmp_path):
    """A deletion AUC (0..1, not a percent) is held to metric_tol / 100: 0.02 is beyond 1 pp."""
    run = make_run(tmp_path / "a")
    ref = _reference(tmp_path, run)
    _edit_first_row(ref, lambda r: r.update(deletion_auc=r["deletion_auc"] + 0.02))
    res = _cli(ref, run, "--metric-tol", "1")
    assert res.exit_code == 1, res.output
    line = next(ln for ln in res.output.splitlines() if " deletion_auc " in f" {ln} ")
    assert "±0.01" in line and "-0.0200" in line
    assert _cli(ref, run, "--metric-tol", "3").exit_code == 0


def test_a_zero_width_interval_at_0_or_100_percent_gets_the_rule_of_three(tmp_path):
    """A reference value every image agreed on (100%, interval 100-100) cannot be moved by
    resampling, yet one image flipping on another CPU moves it by 100/n pp: its half-width is
    taken as 150/n pp (rule of three, halved), not 0."""
    import shutil

    from salbench.compare import degenerate_half_width

    ref = _reference(tmp_path, make_run(tmp_path / "a"))
    rows = _edit_first_row(ref, lambda r: r.update(le=100.0, le_lo=100.0, le_hi=100.0))
    n = rows[0]["images"]
    assert degenerate_half_width(n) == pytest.approx(150 / n) and degenerate_half_width(float("nan")) == 0

    def new_with(le: float) -> Path:
        new = tmp_path / f"new{le}"
        shutil.copytree(ref, new, dirs_exist_ok=True)
        moved = [dict(r) for r in rows]
        moved[0]["le"] = le
        (new / "leaderboard.json").write_text(json.dumps(moved))
        return new

    inside, outside = 100 - 0.9 * 150 / n, 100 - 1.1 * 150 / n
    assert _cli(ref, new_with(inside), "--metric-tol", "1", "--ci-tol", "1").exit_code == 0
    res = _cli(ref, new_with(outside), "--metric-tol", "1", "--ci-tol", "1")
    assert res.exit_code == 1 and any(ln.split()[4:5] == ["le"] for ln in res.output.splitlines() if ln.startswith("localization"))
    assert _cli(ref, new_with(inside), "--metric-tol", "1").exit_code == 1  # no --ci-tol: the plain tolerance
