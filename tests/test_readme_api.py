"""README's "Evaluate your own method" code runs as written: the plugin file's method and the
Python API example (``salbench.api.evaluate``), on a stand-in zoo classifier small enough for a test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _python_block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    hits = [b for b in blocks if marker in b]
    assert len(hits) == 1, f"README: expected one python block with {marker!r}"
    return hits[0]


def test_readme_plugin_file_registers_a_working_method(tmp_path):
    from salbench import plugins
    from salbench.methods import create_method
    from testutils import make_classifier

    path = tmp_path / "my_method.py"
    path.write_text(_python_block("# my_method.py"))
    record = plugins.load_plugin(str(path))
    try:
        assert record["methods"] == ["my_input_x_gradient"]
        clf = make_classifier("test_resnet")
        x, t = torch.rand(3, 3, 32, 32), torch.tensor([1, 4, 7])
        maps = create_method("my_input_x_gradient")(clf, x, t)
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(clf(xg).gather(1, t[:, None]).sum(), xg)
        expected = (x * g).sum(1).abs()
        assert (maps - expected / expected.flatten(1).amax(1).view(-1, 1, 1)).abs().max() <= 1e-6
    finally:
        plugins.unload_plugin(str(path))


@pytest.fixture()
def tiny_resnet_as_zoo_resnet():
    """``zoo:resnet`` replaced, for this test, by a recipe that trains in seconds (the README
    names the real zoo model); the real recipe is put back afterwards."""
    from salbench import zoo
    from salbench.datasets.synthetic import SyntheticConfig
    from testutils import tiny_resnet_recipe

    real = zoo.ZOO.get("resnet")
    zoo.register_recipe(tiny_resnet_recipe("resnet", seed=3, data=SyntheticConfig(seed=3, num_classes=10, size=32)), replace=True)
    yield
    zoo.register_recipe(real, replace=True)


@pytest.mark.slow
def test_readme_python_api_example_runs(tmp_path, monkeypatch, tiny_resnet_as_zoo_resnet, capsys):
    from salbench.methods import METHODS

    monkeypatch.chdir(tmp_path)
    code = _python_block("evaluate(")
    namespace: dict = {"__name__": "readme_example"}
    try:
        exec(compile(code, "README.md (Python API example)", "exec"), namespace)
    finally:
        METHODS.remove("brightness")
    result = namespace["result"]
    assert result.run_dir == Path("results/notebook") and (tmp_path / "results/notebook/run.json").is_file()
    assert set(result.leaderboard["method"]) == {"brightness", "gradcam", "centre"}
    assert result.leaderboard["le"].notna().all() and len(result.localization) == 16 * 3
    assert set(result.agnosticism["variant"]) == {"original", "masked_in", "masked_out", "inpainted"}
    assert result.run["spec"]["method_configs"]["brightness"]["function"] == "readme_example.brightness"
    out = capsys.readouterr().out
    assert "brightness" in out and result.run["hash"][:12] in out


def test_evaluate_builds_the_spec_the_cli_builds(tmp_path, monkeypatch):
    """Same inputs, same ``RunSpec`` (hence the same resolved hash and run directory name) from
    ``salbench.api.evaluate`` and from ``salbench run``: both hand it to ``runner.run``."""
    from click.testing import CliRunner

    import salbench.api
    import salbench.report
    import salbench.runner
    from salbench import plugins
    from salbench.cli import main

    path = tmp_path / "my_method.py"
    path.write_text(_python_block("# my_method.py"))
    specs = []

    def fake_run(spec, out, **kw):
        specs.append(spec)
        return Path(out)

    monkeypatch.setattr(salbench.runner, "run", fake_run)
    monkeypatch.setattr(salbench.api, "run", fake_run)
    monkeypatch.setattr(salbench.report, "write_report", lambda *a, **k: {"files": {"leaderboard.md": path}})
    try:
        r = CliRunner().invoke(main, ["run", "--plugin", str(path), "--methods", "my_input_x_gradient,centre", "--models", "zoo:resnet",
                                      "--limit", "8", "--batch-size", "4", "--out", str(tmp_path / "a")], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        salbench.api.evaluate(methods=[str(path), "centre"], models=["zoo:resnet"], limit=8, batch_size=4, out=tmp_path / "b")
        cli_spec, api_spec = specs
        assert cli_spec == api_spec and cli_spec.plugins == [str(path)]
        assert salbench.runner.resolve(cli_spec).hash == salbench.runner.resolve(api_spec).hash
    finally:
        plugins.unload_plugin(str(path))
