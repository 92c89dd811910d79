"""Reports: leaderboard cells recomputed from the Parquet rows, paper tables, HTML, CLI, timing."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from testutils import skip_unless_ci_requires

from salbench import report as R
from salbench import paper as P
from salbench import util as U
from salbench import tables as T
from salbench.errors import UsageError
from salbench.metrics import bootstrap_ci
from salbench.results import read_table
from test_report_fixtures import make_run

SRC = "zoo:cnn_a"
MODELS = ("zoo:cnn_a", "zoo:vit_b")
EVALS = ("zoo:cnn_a", "zoo:vit_b", "zoo:other_c")
METHODS = ("gradcam", "gradient", "cam", "centre", "full", "random")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(
        tmp_path_factory.mktemp("runs") / "r1", methods=METHODS, models=MODELS, evals=EVALS, n_images=60,
        error_pair=("gradient", SRC), n_errors=3, not_applicable={("cam", "zoo:vit_b"): "CAM needs GAP + linear"},
        throughput=[{"kind": "method", "method": "gradcam", "model": SRC, "device": "cpu", "dtype": "float32", "batch_size": 32, "images_per_s": 123.5},
                    {"kind": "method", "method": "gradcam", "model": SRC, "device": "cpu", "dtype": "float32", "batch_size": 8, "images_per_s": 99.0},
                    {"kind": "pipeline", "method": "gradcam", "model": SRC, "device": "cpu", "dtype": "float32", "batch_size": 32, "images_per_s": 5.0}],
    )


@pytest.fixture(scope="module")
def board(run_dir):
    return R.leaderboard_frame([run_dir])


@pytest.fixture(scope="module")
def report_dir(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    R.write_report([run_dir], out, qualitative=False, paired=[("gradcam", "gradient")])
    return out


def _row(board, method, src=SRC):
    rows = board[(board["method"] == method) & (board["source_model"] == src)]
    assert len(rows) == 1, (method, src)
    return rows.iloc[0]


# ----------------------------------------------------------------------------- leaderboard cells
def test_localisation_cells_match_parquet(run_dir, board):
    loc = read_table(run_dir, "localization")
    g = loc[(loc["method"] == "gradcam") & (loc["source_model"] == SRC) & loc["error"].isna()].sort_values("image_id")
    row = _row(board, "gradcam")
    assert row["images"] == len(g) == 60
    for m in ("le", "om", "f1"):
        assert row[m] == pytest.approx(100 * g[m].astype(float).mean(), rel=1e-6)
    lo, hi = bootstrap_ci(g["le"].to_numpy())
    assert (row["le_lo"], row["le_hi"]) == (pytest.approx(100 * lo), pytest.approx(100 * hi))
    lo, hi = bootstrap_ci(g["f1"].to_numpy())  # continuous values: same draws, same interval
    assert (row["f1_lo"], row["f1_hi"]) == (pytest.approx(100 * lo, rel=1e-9), pytest.approx(100 * hi, rel=1e-9))
    assert row["area"] == pytest.approx(g["area"].astype(float).mean(), rel=1e-6)
    assert row["area_std"] == pytest.approx(g["area"].astype(float).std(ddof=0), rel=1e-5)


def test_failed_images_are_counted_not_averaged(run_dir, board):
    loc = read_table(run_dir, "localization")
    g = loc[(loc["method"] == "gradient") & (loc["source_model"] == SRC)]
    row = _row(board, "gradient")
    assert row["errors"] == 3 and row["images"] == 57
    assert row["le"] == pytest.approx(100 * g.loc[g["error"].isna(), "le"].astype(float).mean(), rel=1e-6)
    assert "3 failed images" in row["note"]


def test_cross_classifier_agnosticism_excludes_the_source(run_dir, board):
    agn = read_table(run_dir, "agnosticism")
    row = _row(board, "gradcam")
    for variant in ("masked_in", "masked_out", "inpainted"):
        a = agn[(agn["method"] == "gradcam") & (agn["source_model"] == SRC) & (agn["variant"] == variant) & agn["error"].isna()]
        per_image = a[a["eval_model"] != SRC].groupby("image_id")["top1"].mean()  # other eval classifiers, per image
        assert row[f"{variant}_top1"] == pytest.approx(100 * per_image.mean(), rel=1e-6)
        lo, hi = bootstrap_ci(per_image.to_numpy())  # then bootstrap over images
        assert row[f"{variant}_top1_lo"] == pytest.approx(100 * lo) and row[f"{variant}_top1_hi"] == pytest.approx(100 * hi)
        assert row[f"{variant}_top1_self"] == pytest.approx(100 * a.loc[a["eval_model"] == SRC, "top1"].mean(), rel=1e-6)
        with_self = 100 * a["top1"].mean()
        if not np.isclose(with_self, row[f"{variant}_top1"]):
            break
    else:
        pytest.fail("cross-classifier values never differ from the all-classifier mean: the test would not catch a self leak")


def test_bootstrap_many_equals_bootstrap_ci():
    rng = np.random.default_rng(1)
    vecs = [rng.random(50), (rng.random(50) > 0.5).astype(float), rng.random(7), np.array([np.nan, 1.0, 0.0, 1.0]), np.array([]), rng.random(50)]
    lo, hi = T.bootstrap_many(vecs, n_boot=500, seed=3)
    for v, a, b in zip(vecs, lo, hi):
        want = bootstrap_ci(v, n_boot=500, seed=3)
        if v[~np.isnan(v)].size == 0:
            assert np.isnan(a) and np.isnan(b) and all(np.isnan(want))
        else:
            assert (a, b) == (pytest.approx(want[0], rel=1e-12), pytest.approx(want[1], rel=1e-12))


def test_controls_and_not_applicable_rows(board, report_dir):
    fam = dict(zip(board["method"], board["family"]))
    assert fam["centre"] == fam["full"] == fam["random"] == "control"
    assert fam["gradcam"] != "control"
    na = _row(board, "cam", "zoo:vit_b")
    assert na["images"] == 0 and na["note"] == "n/a: CAM needs GAP + linear"
    shown = R.filter_methods(board, ["gradcam"])
    assert set(shown["method"]) == {"gradcam", "centre", "full", "random"}  # controls always shown
    md = (report_dir / "leaderboard.md").read_text()
    assert "n/a: CAM needs GAP + linear" in md
    assert "LE % ↓" in md and "F1 % ↑" in md and "masked-out top-1 % ↓" in md and "masked-in top-1 % ↑" in md


def test_throughput_column(board, report_dir):
    row = _row(board, "gradcam")
    assert row["images_per_s"] == pytest.approx(123.5)  # kind "method" only; fastest batch size
    assert np.isnan(_row(board, "gradient")["images_per_s"])
    assert "images/s ↑" in (report_dir / "leaderboard.md").read_text()


# ----------------------------------------------------------------------------- protocols, merging
def test_different_protocols_are_grouped_or_refused(run_dir, tmp_path):
    other = make_run(tmp_path / "r2", methods=("gradcam", "centre"), models=MODELS, evals=EVALS, n_images=60, inpaint="biharmonic", seed=5)
    groups = T.load_groups([run_dir, other])
    assert len(groups) == 2 and groups[1].protocol["inpaint"] == "biharmonic"
    with pytest.raises(UsageError, match=r"inpaint.*'telea' vs 'biharmonic'"):
        T.load_groups([run_dir, other], strict=True)
    out = R.write_report([run_dir, other], tmp_path / "rep", qualitative=False)
    md = out["files"]["leaderboard.md"].read_text()
    assert "## Protocol 1" in md and "## Protocol 2" in md
    assert (tmp_path / "rep" / "figures" / "figure3-p2.png").is_file()
    csv = pd.read_csv(tmp_path / "rep" / "tables" / "table1.csv")
    assert set(csv["protocol"]) == {1, 2}
    res = CliRunner().invoke(_cli(), ["report", str(run_dir), str(other), "--out", str(tmp_path / "x"), "--strict-protocol", "--no-qualitative"])
    assert res.exit_code == 2 and "inpaint" in res.output


def test_runs_with_one_protocol_merge(run_dir, tmp_path):
    later = make_run(tmp_path / "r3", methods=("rise", "gradcam"), models=MODELS, evals=EVALS, n_images=60, seed=9, run_id="later0000000")
    groups = T.load_groups([run_dir, later])
    assert len(groups) == 1
    board = T.leaderboard(groups[0])
    assert {"rise", "gradcam", "gradient", "centre"} <= set(board["method"])
    loc = read_table(later, "localization")
    g = loc[(loc["method"] == "gradcam") & (loc["source_model"] == SRC)]
    assert _row(board, "gradcam")["le"] == pytest.approx(100 * g["le"].astype(float).mean(), rel=1e-6)  # the later run wins
    assert any("gradcam on zoo:cnn_a" in n and "later0000000" in n for n in groups[0].notes)


# ----------------------------------------------------------------------------- paired comparison
def test_paired_difference(run_dir):
    d = R.paired_difference([run_dir], "gradcam", "gradient", "le", source_model=SRC)
    assert len(d) == 1
    r = d.iloc[0]
    loc = read_table(run_dir, "localization")
    ok = loc[loc["error"].isna() & (loc["source_model"] == SRC)]
    a = ok[ok["method"] == "gradcam"].set_index("image_id")["le"].astype(float)
    b = ok[ok["method"] == "gradient"].set_index("image_id")["le"].astype(float)
    both = pd.concat([a, b], axis=1, join="inner").sort_index()
    diff = 100 * (both.iloc[:, 0] - both.iloc[:, 1]).to_numpy()
    assert r["images"] == 57  # only images where both methods have values
    assert r["diff"] == pytest.approx(diff.mean())
    lo, hi = bootstrap_ci(diff)
    assert (r["diff_lo"], r["diff_hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert bool(r["significant"]) == (lo > 0 or hi < 0)

    x = R.paired_difference([run_dir], "gradcam", "centre", "inpainted_top1")
    assert list(x["source_model"]) == list(MODELS)
    agn = read_table(run_dir, "agnosticism")
    sel = agn[(agn["source_model"] == SRC) & (agn["variant"] == "inpainted") & (agn["eval_model"] != SRC)]
    per = {m: sel[sel["method"] == m].groupby("image_id")["top1"].mean() for m in ("gradcam", "centre")}
    assert x.iloc[0]["diff"] == pytest.approx(100 * (per["gradcam"] - per["centre"]).mean())

    with pytest.raises(UsageError, match="gradcamm"):
        R.paired_difference([run_dir], "gradcamm", "gradient", "le")
    with pytest.raises(UsageError, match="unknown metric"):
        R.paired_difference([run_dir], "gradcam", "gradient", "lee")


# ----------------------------------------------------------------------------- paper tables
def test_output_layout(report_dir):
    for rel in ("leaderboard.md", "leaderboard.html", "leaderboard.json", "figures/figure3.png", "figures/figure3.pdf",
                "tables/paired.md", "tables/paired.csv", *(f"tables/{t}.{e}" for t in ("table1", "mask_stats") for e in ("md", "tex", "csv"))):
        assert (report_dir / rel).is_file(), rel
    assert (report_dir / "figures" / "figure3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (report_dir / "figures" / "figure3.pdf").read_bytes()[:5] == b"%PDF-"
    assert not (report_dir / "tables" / "table2.md").exists()  # no CASM maskers in this run
    assert not (report_dir / "tables" / "table3.md").exists()
    assert not list(report_dir.rglob("*.tmp"))


def test_table1_csv_matches_board(report_dir, board):
    csv = pd.read_csv(report_dir / "tables" / "table1.csv")
    r = csv[(csv["method"] == "gradcam") & (csv["source_model"] == SRC)].iloc[0]
    b = _row(board, "gradcam")
    for m in ("om", "le", "f1", "le_lo", "le_hi"):
        assert r[m] == pytest.approx(b[m], rel=1e-5)
    stats = pd.read_csv(report_dir / "tables" / "mask_stats.csv")
    assert list(stats.columns)[:7] == ["protocol", "method", "source_model", "area", "area_std", "tv", "entropy"]


def _check_latex_structure(tex: str) -> None:
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", tex).group(1)
    body = tex.split("\\midrule", 1)[1].split("\\bottomrule")[0]
    rows = [ln for ln in body.splitlines() if ln.strip().endswith("\\\\")]
    assert rows
    header = tex.split("\\toprule", 1)[1].split("\\midrule")[0]
    for ln in rows + [header.strip()]:
        assert ln.count("&") + 1 == len(spec), ln
    for ln in tex.splitlines():
        if ln.startswith("%") or ln.startswith("\\label"):
            continue
        assert not re.search(r"(?<!\\)[_%#]", ln), f"unescaped character in: {ln}"
    assert "zoo:cnn\\_a" in tex


@pytest.mark.uses_tool("pdflatex")
def test_latex_tables(report_dir, tmp_path):
    for name in ("table1", "mask_stats"):
        tex = (report_dir / "tables" / f"{name}.tex").read_text()
        _check_latex_structure(tex)
    if shutil.which("pdflatex") is None:
        skip_unless_ci_requires("pdflatex", "pdflatex not installed: structure checked only")
    for name in ("table1", "mask_stats"):
        doc = tmp_path / f"{name}_doc.tex"
        doc.write_text("\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{booktabs}\n\\begin{document}\n"
                       f"\\input{{{(report_dir / 'tables' / f'{name}.tex').as_posix()}}}\n\\end{{document}}\n")
        res = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout[-2000:]


@pytest.fixture(scope="module")
def casm_run(tmp_path_factory):
    params = {
        "casm": {"score": "entropy", "share_encoder": True, "thinning": "L100", "train_classes": [0, 1, 2, 3, 4]},
        "casm-baseline": {"score": "entropy", "share_encoder": True, "thinning": "F", "train_classes": "0+1+2+3+4"},
        "casm-cls": {"score": "classification", "share_encoder": False, "thinning": "L", "train_classes": None},
    }
    return make_run(tmp_path_factory.mktemp("casm") / "run", methods=("casm", "casm-baseline", "casm-cls", "gradcam", "centre"),
                    models=MODELS, evals=EVALS, n_images=60, method_params=params, seed=11)


def test_table2_casm_ablation(casm_run, tmp_path):
    out = R.write_report([casm_run], tmp_path, qualitative=False)
    t2 = pd.read_csv(tmp_path / "tables" / "table2.csv")
    assert set(t2["method"]) == {"casm", "casm-baseline", "casm-cls"}
    r = t2[(t2["method"] == "casm-cls") & (t2["source_model"] == SRC)].iloc[0]
    assert (r["score"], r["sharing"], r["thinning"]) == ("classification", "separate", "L")
    r = t2[(t2["method"] == "casm") & (t2["source_model"] == SRC)].iloc[0]
    assert (r["score"], r["sharing"], r["thinning"]) == ("entropy", "shared", "L100")
    _check_latex_structure((tmp_path / "tables" / "table2.tex").read_text())
    assert "Table 2" in out["files"]["leaderboard.html"].read_text()


def test_table3_seen_vs_unseen(casm_run, tmp_path):
    R.write_report([casm_run], tmp_path, qualitative=False)
    t3 = pd.read_csv(tmp_path / "tables" / "table3.csv")
    assert set(t3["method"]) == {"casm", "casm-baseline"}  # casm-cls was trained on all classes
    loc = read_table(casm_run, "localization")
    g = loc[(loc["method"] == "casm") & (loc["source_model"] == SRC)]
    seen = g["label"].isin([0, 1, 2, 3, 4])
    r = t3[(t3["method"] == "casm") & (t3["source_model"] == SRC)].iloc[0]
    assert r["le_seen"] == pytest.approx(100 * g.loc[seen, "le"].astype(float).mean(), rel=1e-5)
    assert r["le_unseen"] == pytest.approx(100 * g.loc[~seen, "le"].astype(float).mean(), rel=1e-5)
    assert r["images_seen"] == seen.sum() and r["images_unseen"] == (~seen).sum()
    lo, _ = bootstrap_ci(g.loc[seen].sort_values("image_id")["le"].to_numpy())
    assert r["le_seen_lo"] == pytest.approx(100 * lo, rel=1e-5)
    _check_latex_structure((tmp_path / "tables" / "table3.tex").read_text())


def test_parse_classes():
    assert U.parse_classes([3, 1]) == {1, 3}
    assert U.parse_classes("0-2,5") == {0, 1, 2, 5}
    assert U.parse_classes("0+1") == {0, 1}
    assert U.parse_classes(None) is None and U.parse_classes("all") is None


# ----------------------------------------------------------------------------- HTML
def test_html_is_self_contained(report_dir):
    page = (report_dir / "leaderboard.html").read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I), "external reference"
    assert not re.search(r"https?://", page), "URL in the page"
    assert "<link" not in page.lower()
    assert not re.search(r"<script[^>]+src", page, re.I)
    assert "@import" not in page and "url(" not in page
    assert page.count('<img alt="') >= 1 and 'src="data:image/png;base64,' in page
    assert '<table class="sortable">' in page and "<script>" in page
    assert 'data-best="lower"' in page and 'data-best="higher"' in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


@pytest.mark.slow
@pytest.mark.uses_tool("chromium")
def test_html_renders_in_headless_chromium(report_dir, tmp_path):
    if _chromium() is None:
        skip_unless_ci_requires("chromium", "chromium not installed")
    url = (report_dir / "leaderboard.html").resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([_chromium(), *CHROME_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=180).stdout
    assert "<table" in dom and "gradcam" in dom and "data:image/png;base64," in dom
    # the inline sort script works: click the LE header (lower is better: best first), read the column back
    page = (report_dir / "leaderboard.html").read_text()
    probe = ("<script>var t=document.querySelector('table.sortable');var th=Array.prototype.find.call(t.tHead.rows[0].cells,"
             "function(c){return c.textContent.indexOf('LE %')===0});th.click();var i=th.cellIndex;"
             "document.body.setAttribute('data-sorted',Array.prototype.map.call(t.tBodies[0].rows,function(r){return r.cells[i].dataset.v}).join(';'));</script>")
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(page.replace("</body>", probe + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([_chromium(), *CHROME_FLAGS, f"--user-data-dir={profile}", "--dump-dom", probe_page.as_uri()],
                             capture_output=True, text=True, timeout=180).stdout
    values = re.search(r'data-sorted="([^"]*)"', dom).group(1).split(";")
    nums = [float(v) for v in values if v]
    assert nums and nums == sorted(nums) and values[len(nums):] == [""] * (len(values) - len(nums))
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([_chromium(), *CHROME_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1400,1000", url],
                       capture_output=True, text=True, timeout=180)
    assert shot.is_file()
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[0] >= 900 and img.shape[1] >= 1300
    assert len(np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50  # a rendered page, not a blank one


# ----------------------------------------------------------------------------- qualitative figure
def _tiny_run(tmp_path, models=("cnn",), examples=True):
    return make_run(tmp_path / "tiny", methods=("gradcam", "centre", "random"), models=models, evals=models, n_images=12, batch=6,
                    dataset="synthetic?split=val&n=12&seed=0&classes=10&size=32", image_size=(32, 32), examples=examples)


def test_qualitative_figure_is_drawn_from_the_stored_examples(tmp_path):
    from salbench import figures as F

    group = T.load_groups([_tiny_run(tmp_path, models=("cnn", "vit"))])[0]
    png, notes = F.qualitative(group, n_images=2)
    assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n", notes
    png, notes = F.qualitative(group, n_images=5)
    assert png is not None and any("5 images asked, the run stores 3" in n for n in notes)


def test_report_loads_no_classifier_dataset_or_method(tmp_path, monkeypatch):
    """The whole report, qualitative figure included, creates no model, builds no dataset and
    makes no saliency method (whose maps it would compute)."""
    import timm

    from salbench import datasets
    from salbench.methods.base import SaliencyMethod

    def refuse(*args, **kwargs):
        raise AssertionError("the report tried to load a classifier, build a dataset or create a method")

    for obj, name in ((timm, "create_model"), (datasets, "build_dataset"), (datasets, "collate"), (SaliencyMethod, "__init__")):
        monkeypatch.setattr(obj, name, refuse)
    out = R.write_report([_tiny_run(tmp_path)], tmp_path / "rep")
    assert "figures/qualitative.png" in out["files"], out["notes"]


def test_report_skips_qualitative_when_the_run_stores_no_examples(tmp_path):
    run = _tiny_run(tmp_path, models=("zoo:resnet",), examples=False)
    out = R.write_report([run], tmp_path / "rep", qualitative=True)
    assert not (tmp_path / "rep" / "figures" / "qualitative.png").exists()
    assert any("qualitative figure skipped" in n and "stores no example images" in n for n in out["notes"])
    assert "qualitative figure skipped" in (tmp_path / "rep" / "leaderboard.md").read_text()


def test_report_draws_qualitative_with_examples(tmp_path):
    run = _tiny_run(tmp_path)
    out = R.write_report([run], tmp_path / "rep", qualitative=True)
    assert (tmp_path / "rep" / "figures" / "qualitative.png").is_file(), out["notes"]
    assert "figures/qualitative.png" in out["files"]


# ----------------------------------------------------------------------------- entry points
def _cli():
    from salbench.cli import main

    return main


def test_cli_report(run_dir, tmp_path):
    out = tmp_path / "cli"
    res = CliRunner().invoke(_cli(), ["report", str(run_dir), "--out", str(out), "--no-qualitative", "--paired", "gradcam,gradient",
                                      "--paired-metric", "le,inpainted_top1", "--n-boot", "200"])
    assert res.exit_code == 0, res.output
    assert (out / "leaderboard.html").is_file() and (out / "tables" / "table1.tex").is_file()
    paired = pd.read_csv(out / "tables" / "paired.csv")
    assert set(paired["metric"]) == {"le", "inpainted_top1"}
    res = CliRunner().invoke(_cli(), ["report", str(run_dir), "--out", str(out), "--no-qualitative", "--paired", "gradcam"])
    assert res.exit_code == 2 and "two comma-separated" in res.output
    res = CliRunner().invoke(_cli(), ["report", str(run_dir), "--out", str(out), "--no-qualitative", "--paired", "gradcam,gradiant"])
    assert res.exit_code == 2 and "gradient" in res.output
    res = CliRunner().invoke(_cli(), ["report", str(tmp_path), "--no-qualitative"])
    assert res.exit_code == 2 and "not a salbench run directory" in res.output
    res = CliRunner().invoke(_cli(), ["report", str(run_dir), "--out", str(out), "--qualitative-images", "4"])
    assert res.exit_code == 2 and "stores 3 example images" in res.output


def test_write_leaderboard_entry_point(run_dir, tmp_path):
    path = R.write_leaderboard([run_dir], tmp_path)
    assert path == tmp_path / "leaderboard.md" and path.is_file()
    assert (tmp_path / "leaderboard.html").is_file() and (tmp_path / "figures" / "figure3.png").is_file()
    assert not (tmp_path / "figures" / "qualitative.png").exists()


@pytest.mark.slow
def test_report_of_default_size_run_is_fast(tmp_path):
    """500 images x 10 methods x 4 models x 4 evals x 4 variants = 320k agnosticism rows: < 30 s."""
    methods = ("gradcam", "gradient", "guided", "cam", "occlusion", "rise", "casm", "centre", "full", "random")
    models = ("zoo:a", "zoo:b", "zoo:c", "zoo:d")
    run = make_run(tmp_path / "big", methods=methods, models=models, n_images=500, batch=64)
    assert len(read_table(run, "agnosticism", columns=["top1"])) == 320_000
    t0 = time.perf_counter()
    R.write_report([run], tmp_path / "rep", qualitative=False, paired=[("gradcam", "gradient")])
    elapsed = time.perf_counter() - t0
    assert elapsed < 30, f"report took {elapsed:.1f}s"


def test_markdown_leaderboard_escapes_names_from_the_run(tmp_path):
    """A run directory named like a link or HTML is shown as text in leaderboard.md (HTML is escaped too)."""
    import shutil

    from salbench.render import md_escape
    from salbench.report import write_report
    from test_report_fixtures import make_run

    evil = tmp_path / "x](javascript:alert(1))<img src=q onerror=alert(2)>|"
    src = make_run(tmp_path / "plain")
    shutil.copytree(src, evil)
    md = write_report([evil], tmp_path / "rep", qualitative=False)["files"]["leaderboard.md"].read_text()
    assert "](javascript:" not in md and not re.search(r"(?<!\\)<img", md)
    assert md_escape(str(evil)) in md
    assert md_escape("a|b\nc*d") == "a\\|b c\\*d"


def test_paper_tables_show_the_official_casm_scoring_when_the_runs_have_it():
    from types import SimpleNamespace

    g = SimpleNamespace(index=1, label="synthetic", models=["m"], method_params=lambda m: {"train_classes": [0, 1]} if m == "casm" else {})
    board = pd.DataFrame({"method": ["casm", "gradcam"], "source_model": ["m", "m"], "images": [4, 4], "control": [False, False],
                          "om": [50.0, 75.0], "le": [25.0, 50.0], "f1": [60.0, 40.0],
                          "casm_om": [75.0, 100.0], "casm_le": [50.0, 75.0], "casm_f1": [55.0, 35.0]})
    t = P.table1([(g, board)])
    assert [c.key for c in t.columns][2:] == ["casm_om", "casm_le", "casm_f1"] and "official CASM" in t.caption
    csv = pd.read_csv(__import__("io").StringIO(t.to_csv()))
    assert csv["casm_le"].tolist() == [50.0, 75.0] and "le" not in csv.columns
    old = board.assign(casm_om=np.nan, casm_le=np.nan, casm_f1=np.nan)
    t = P.table1([(g, old)])
    assert [c.key for c in t.columns][2:] == ["om", "le", "f1"] and "mean_area" in t.caption
    mixed = P.table1([(g, board), (SimpleNamespace(index=2, label="other"), old)])
    assert mixed.columns[3].key == "casm_le" and "before the casm_* columns" in mixed.caption
    # table 3: seen / unseen from the per-image casm_le / casm_om columns
    loc = pd.DataFrame({"method": ["casm"] * 4, "source_model": ["m"] * 4, "label": [0, 1, 2, 3], "image_id": list("abcd"),
                        "le": [0.0, 0.0, 1.0, 1.0], "om": [0.0, 1.0, 1.0, 1.0], "casm_le": [1.0, 0.0, 1.0, 0.0],
                        "casm_om": [1.0, 1.0, 1.0, 0.0], "error": [None] * 4})
    t3 = P.table3([SimpleNamespace(index=1, label="x", loc=loc, models=["m"], method_params=g.method_params)], n_boot=10)
    row = t3.blocks[0][1].iloc[0]
    assert (row["casm_le_seen"], row["casm_le_unseen"], row["casm_om_unseen"]) == (50.0, 50.0, 50.0)
    assert t3.columns[3].key == "casm_le_seen" and "official CASM" in t3.caption
