"""The CLI contract: --help everywhere, exit 2 with a one-line message naming the bad value, nothing written."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from salbench.cli import main


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return invoke


@pytest.mark.parametrize("cmd", [[], ["run"], ["methods", "list"], ["models", "list"], ["zoo", "build"], ["report"]])
def test_help(cli, cmd):
    r = cli(*cmd, "--help")
    assert r.exit_code == 0 and "Usage" in r.output


def _assert_usage_error(result, *needles, tmp_path=None):
    assert result.exit_code == 2, result.output
    lines = [l for l in result.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1, result.output
    for n in needles:
        assert n in lines[0]


@pytest.mark.parametrize("args,needles", [
    (["--methods", "gradcm"], ["'gradcm'", "gradcam"]),
    (["--methods", "nothing*"], ["'nothing*'"]),
    (["--models", "zoo:resnett"], ["'resnett'"]),
    (["--models", "not_a_timm_model_xyz"], ["'not_a_timm_model_xyz'"]),
    (["--dataset", "synthtic"], ["'synthtic'"]),
    (["--dataset", "synthetic?size=abc"], ["size"]),
    (["--config", "missing.yaml"], ["'missing.yaml'"]),
    (["--limit", "0"], ["limit=0"]),
    (["--inpaint", "photoshop"], ["'photoshop'"]),
    (["--binarize", "otsu"], ["'otsu'"]),
    (["--device", "tpu"], ["'tpu'"]),
])
def test_bad_arguments_exit_2_and_write_nothing(cli, tmp_path, args, needles):
    r = cli("run", "--no-progress", *args)
    _assert_usage_error(r, *needles)
    assert not (tmp_path / "results").exists()


def test_malformed_config(cli, tmp_path):
    (tmp_path / "bad.yaml").write_text("methods: [gradcam\n")
    r = cli("run", "--config", "bad.yaml")
    _assert_usage_error(r, "bad.yaml", "malformed")
    (tmp_path / "typo.toml").write_text('methds = ["gradcam"]\n')
    r = cli("run", "--config", "typo.toml")
    _assert_usage_error(r, "'methds'")
    assert not (tmp_path / "results").exists()


def test_existing_output_dir_without_resume(cli, tmp_path):
    out = tmp_path / "prev"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    r = cli("run", "--no-progress", "--out", str(out), "--methods", "centre", "--models", "zoo:resnet", "--limit", "4")
    _assert_usage_error(r, str(out), "--resume")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"


def test_methods_list_shows_every_method_and_cost(cli):
    from salbench.methods import METHODS

    r = cli("methods", "list")
    assert r.exit_code == 0
    for name in METHODS.names():
        assert name in r.output
    assert "fwd/img" in r.output


def test_readme_test_command_is_what_ci_runs():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    ci = (root / ".ci" / "run").read_text()
    blocks = [b.split("```")[0].strip() for b in readme.split("```bash")[1:]]
    test_cmd = next(b for b in blocks if "pytest" in b)
    assert test_cmd in ci
    main_cmd = next(b for b in blocks if "salbench run" in b)
    assert main_cmd.endswith("salbench run")


@pytest.mark.slow
def test_a_report_that_fails_after_a_complete_run_says_so_in_one_line(tmp_path, monkeypatch):
    """Disk full while writing the report: exit 1, one line; the run's tables stay complete and readable."""
    import errno

    from salbench import report, zoo
    from salbench.results import read_table
    from testutils import tiny_resnet_recipe

    zoo.register_recipe(tiny_resnet_recipe("cli-report-fail", seed=4), replace=True)

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "write_report", full_disk)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["run", "--dataset", "synthetic?n=4&size=32&classes=4", "--models", "zoo:cli-report-fail",
                                    "--methods", "centre", "--batch-size", "4", "--out", "r", "--no-progress"])
    assert res.exit_code == 1
    assert "writing its report failed (OSError: [Errno 28] No space left on device)" in res.output
    assert "salbench report r" in res.output and "Traceback" not in res.output
    assert json.loads((tmp_path / "r" / "run.json").read_text())["status"] == "complete"
    assert len(read_table(tmp_path / "r", "localization")) == 4
