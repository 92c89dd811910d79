"""Methods from outside salbench: a plugin file (``--plugin``, the ``plugins`` spec key), an
installed package's ``salbench.methods`` entry point, and plain functions; their provenance in
run.json and the map-cache key; failures are one line (exit 2) or error rows, never a crash."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from salbench import plugins
from salbench.cli import main
from salbench.config import RunSpec
from salbench.errors import UsageError
from salbench.methods import METHODS, create_method
from salbench.methods.base import MethodOutputError
from salbench.results import read_table
from testutils import tiny_resnet_recipe

PLUGIN = textwrap.dedent(
    '''
    """A user's methods, in a file outside the repository."""
    import torch
    from salbench.api import saliency_method
    from salbench.methods.base import Capabilities, SaliencyMethod, register_method

    @saliency_method("my_brightness", classifier_dependent=False, family="control")
    def my_brightness(classifier, images, targets):
        """Control: image brightness."""
        return images.mean(1)

    @register_method("my_input_x_gradient")
    class InputXGradient(SaliencyMethod):
        capabilities = Capabilities(needs_gradients=True, family="gradient")
        description = "|sum_c x * dS/dx|"

        def attribute(self, classifier, images, targets, seeds):
            x = images.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(classifier(x).gather(1, targets[:, None]).sum(), x)
            return (x * g).sum(1).abs()
    '''
)

BROKEN_OUTPUTS = textwrap.dedent(
    '''
    import torch
    from salbench.api import saliency_method

    @saliency_method("bad_shape")
    def bad_shape(classifier, images, targets):
        return images.mean(1)[:, None]          # B x 1 x H x W

    @saliency_method("bad_nan")
    def bad_nan(classifier, images, targets):
        return images.mean(1) * float("nan")

    @saliency_method("bad_negative")
    def bad_negative(classifier, images, targets):
        return images.mean(1) - 1
    '''
)


@pytest.fixture(scope="module")
def tiny_zoo():
    from salbench import zoo

    zoo.register_recipe(tiny_resnet_recipe("plugin-cnn", seed=11), replace=True)
    return "zoo:plugin-cnn"


@pytest.fixture()
def plugin_file(tmp_path_factory):
    """The plugin in a fresh folder outside the repository; unloaded afterwards."""
    path = tmp_path_factory.mktemp("user_code") / "my_methods.py"
    path.write_text(PLUGIN)
    yield path
    plugins.unload_plugin(str(path))


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def _cli(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _one_line_exit_2(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    for n in needles:
        assert n in lines[0], lines[0]


DATA = "synthetic?n=12&size=32&classes=4"


@pytest.mark.slow
def test_cli_run_with_a_plugin_file_puts_its_rows_in_the_tables_and_leaderboard(plugin_file, tiny_zoo, tmp_path):
    out = tmp_path / "run"
    r = _cli("run", "--no-progress", "--plugin", str(plugin_file), "--methods", "my_brightness,my_input_x_gradient,centre",
             "--models", tiny_zoo, "--dataset", DATA, "--batch-size", "6", "--device", "cpu", "--out", str(out))
    assert r.exit_code == 0, r.output
    loc = read_table(out, "localization")
    agn = read_table(out, "agnosticism")
    for m in ("my_brightness", "my_input_x_gradient"):
        rows = loc[loc["method"] == m]
        assert len(rows) == 12 and rows["error"].isna().all() and rows["le"].notna().all()
        assert (agn["method"] == m).sum() == 12 * 4  # one eval classifier x 4 variants
    board = (out / "leaderboard.md").read_text()
    assert "| my_input_x_gradient |" in board and "| my_brightness |" in board
    meta = json.loads((out / "run.json").read_text())
    [rec] = meta["plugins"]
    assert rec["kind"] == "file" and rec["source"] == str(plugin_file)
    assert rec["sha256"] == plugins._sha256(plugin_file)
    assert rec["methods"] == ["my_brightness", "my_input_x_gradient"]
    assert meta["spec"]["plugins"] == [rec]  # in the hashed spec too
    assert meta["spec"]["method_configs"]["my_brightness"]["family"] == "control"


def test_plugin_file_hash_enters_the_spec_hash_and_the_map_cache_key(tmp_path):
    from salbench.mapcache import code_digest
    from salbench.runner import resolve

    path = _write(tmp_path, "edited.py", PLUGIN)
    spec = dict(plugins=[str(path)], methods=["my_input_x_gradient", "my_brightness"], models=["zoo:resnet"], dataset=DATA)
    try:
        first = resolve(RunSpec(**spec))
        digests = {m: code_digest(create_method(m)) for m in ("my_input_x_gradient", "my_brightness")}
        path.write_text(PLUGIN.replace("return images.mean(1)", "return images.amax(1)").replace('"|sum_c', '"| sum_c'))
        second = resolve(RunSpec(**spec))
        assert first.config["plugins"][0]["sha256"] != second.config["plugins"][0]["sha256"]
        assert first.hash != second.hash  # an edited plugin is another run (no --resume across it)
        for m, before in digests.items():  # the class's file and the function's code: both move the map key
            assert code_digest(create_method(m)) != before
        assert create_method("my_brightness")(None, torch.ones(1, 3, 4, 4) * torch.arange(4.0), torch.tensor([0])).shape == (1, 4, 4)
    finally:
        plugins.unload_plugin(str(path))
    assert "my_brightness" not in METHODS


def test_a_spec_without_plugins_keeps_its_dict():
    assert "plugins" not in RunSpec().to_dict()
    assert RunSpec(plugins=[]).to_dict() == RunSpec().to_dict()


def test_config_file_plugins_key_and_its_method_params(plugin_file, tmp_path):
    cfg = _write(tmp_path, "spec.yaml", f"plugins: [{plugin_file}]\nmethods: [my_input_x_gradient]\nmethod_params: {{my_input_x_gradient: {{}}}}\n")
    spec = RunSpec.from_file(cfg)
    assert spec.plugins == [str(plugin_file)] and "my_input_x_gradient" in METHODS
    bad = _write(tmp_path, "bad.yaml", "methods: [centre]\nplugins: [does/not/exist.py]\n")
    with pytest.raises(UsageError, match=r"line 2: plugins\[0\]: plugin '.*/does/not/exist.py': no such file"):
        RunSpec.from_file(bad)
    with pytest.raises(UsageError, match=r"plugins=\[3\]: expected a list of plugin files"):
        RunSpec(plugins=[3])


def test_config_file_plugin_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    """A spec names its plugin beside it and runs from any working directory; the path enters the
    spec as the config path's folder joined with it (not made absolute: the hash stays portable)."""
    folder = tmp_path / "study"
    folder.mkdir()
    plugin = _write(folder, "beside.py", PLUGIN)
    _write(folder, "spec.yaml", "plugins: [beside.py]\nmethods: [my_brightness]\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    try:
        spec = RunSpec.from_file(Path("..") / "study" / "spec.yaml")
        assert spec.plugins == [str(Path("..") / "study" / "beside.py")]
        assert "my_brightness" in METHODS
    finally:
        plugins.unload_plugin(str(plugin))
    from salbench.config import _beside

    assert _beside(Path("a/spec.yaml"), "my_pkg.methods") == "my_pkg.methods" and _beside(Path("a/s.yaml"), str(plugin)) == str(plugin)


@pytest.mark.parametrize("body,needles", [
    ("import not_a_module_xyz\n", ["failed to import", "ModuleNotFoundError", "not_a_module_xyz"]),
    ("raise SystemExit(3)\n", ["failed to import", "SystemExit"]),
    ("from salbench.api import saliency_method\n@saliency_method('gradcam')\ndef f(c, x, t):\n    return x.mean(1)\n",
     ["registers 'gradcam'", "already taken"]),
])
def test_a_plugin_that_fails_is_one_line_exit_2_and_nothing_is_written(tmp_path, monkeypatch, body, needles):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, "broken.py", "from salbench.api import saliency_method\n@saliency_method('half_registered')\n"
                  "def g(c, x, t):\n    return x.mean(1)\n" + body)
    before = METHODS.names()
    r = _cli("run", "--no-progress", "--plugin", str(path), "--methods", "centre", "--models", "zoo:resnet", "--limit", "4")
    _one_line_exit_2(r, "--plugin", str(path), *needles)
    assert METHODS.names() == before  # rolled back: no half-registered method stays
    assert METHODS.get("gradcam").__module__ == "salbench.methods.cam"
    assert not (tmp_path / "results").exists()
    _one_line_exit_2(_cli("methods", "list", "--plugin", str(path)), "--plugin", *needles)
    _one_line_exit_2(_cli("run", "--import", "no_such_pkg_xyz.methods", "--models", "zoo:resnet"), "--import", "ModuleNotFoundError")


def test_methods_list_with_a_plugin(plugin_file):
    r = _cli("methods", "list", "--plugin", str(plugin_file))
    assert r.exit_code == 0, r.output
    row = next(line for line in r.output.splitlines() if line.startswith("my_input_x_gradient"))
    assert "gradient" in row and "|sum_c x * dS/dx|" in row
    assert not any(line.startswith("captum:") for line in r.output.splitlines())


def test_loading_the_same_file_twice_is_a_no_op(plugin_file):
    a = plugins.load_plugin(str(plugin_file))
    cls = METHODS.get("my_brightness")
    b = plugins.load_plugin(str(plugin_file))
    assert a["sha256"] == b["sha256"] and METHODS.get("my_brightness") is cls


# --------------------------------------------------------------------------- output contract
@pytest.mark.parametrize("name,needle", [
    ("bad_shape", "returned shape (2, 1, 8, 8), expected B x H x W maps with B = 2"),
    ("bad_nan", "returned NaN values (128 of 128 pixels)"),
    ("bad_negative", "returned negative values (min -0.5) under normalization 'max'"),
])
def test_function_output_is_checked_with_a_line_naming_the_method(tmp_path, name, needle):
    path = _write(tmp_path, "outputs.py", BROKEN_OUTPUTS)
    plugins.load_plugin(str(path))
    try:
        with pytest.raises(MethodOutputError) as e:
            create_method(name)(None, torch.rand(2, 3, 8, 8) * 0 + 0.5, torch.tensor([0, 1]))
        assert str(e.value).startswith(f"method {name!r} returned") and needle in str(e.value)
        assert len(str(e.value).splitlines()) == 1
    finally:
        plugins.unload_plugin(str(path))


def test_normalization_none_refuses_values_above_one_and_minmax_takes_signed_maps():
    from salbench.api import saliency_method

    @saliency_method("t_above_one", normalization="none")
    def above(classifier, images, targets):
        return images.mean(1) * 3

    @saliency_method("t_signed", normalization="minmax")
    def signed(classifier, images, targets):
        return images.mean(1) - 0.5

    try:
        x = torch.rand(2, 3, 8, 8)
        with pytest.raises(MethodOutputError, match="'t_above_one' returned values above 1"):
            create_method("t_above_one")(None, x, torch.tensor([0, 1]))
        m = create_method("t_signed")(None, x, torch.tensor([0, 1]))
        assert m.min() == 0 and m.amax((1, 2)).eq(1).all()
        with pytest.raises(ValueError, match="normalization='sigmoid'"):
            saliency_method("t_bad", normalization="sigmoid")
    finally:
        METHODS.remove("t_above_one")
        METHODS.remove("t_signed")


@pytest.mark.slow
def test_a_plugin_with_broken_maps_becomes_error_rows_and_the_run_goes_on(tmp_path, tiny_zoo):
    from salbench.runner import run

    path = _write(tmp_path, "outputs.py", BROKEN_OUTPUTS)
    try:
        spec = RunSpec(plugins=[str(path)], methods=["bad_shape", "bad_nan", "bad_negative", "centre"], models=[tiny_zoo],
                       dataset=DATA, batch_size=6, device="cpu")
        out = run(spec, tmp_path / "run", progress=False)
    finally:
        plugins.unload_plugin(str(path))
    loc = read_table(out, "localization")
    assert loc.loc[loc["method"] == "centre", "error"].isna().all() and (loc["method"] == "centre").sum() == 12
    for name, needle in (("bad_shape", "returned shape"), ("bad_nan", "returned NaN"), ("bad_negative", "returned negative values")):
        errors = loc.loc[loc["method"] == name, "error"]
        assert len(errors) == 12 and errors.str.startswith(f"MethodOutputError: method {name!r} {needle}").all(), errors.iloc[0]
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "complete" and meta["counts"]["errors"] == 36


# --------------------------------------------------------------------------- entry points
ENTRY_MODULE = textwrap.dedent(
    '''
    from salbench.api import saliency_method

    @saliency_method("ep_brightness", classifier_dependent=False)
    def ep_brightness(classifier, images, targets):
        """Control from an installed package."""
        return images.mean(1)
    '''
)


@pytest.fixture()
def installed_package(tmp_path, monkeypatch):
    """A package installed into a temporary site folder: its module and its dist-info with a
    ``salbench.methods`` entry point (what ``pip install`` of a plugin package leaves)."""
    site = tmp_path / "site"
    (site / "salbench_ep_demo").mkdir(parents=True)
    (site / "salbench_ep_demo" / "__init__.py").write_text("")
    (site / "salbench_ep_demo" / "methods.py").write_text(ENTRY_MODULE)
    (site / "broken_ep_demo.py").write_text("raise RuntimeError('cannot start')\n")
    info = site / "salbench_ep_demo-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: salbench-ep-demo\nVersion: 1.2.3\n")
    (info / "top_level.txt").write_text("salbench_ep_demo\n")
    (info / "entry_points.txt").write_text("[salbench.methods]\ndemo = salbench_ep_demo.methods\nbroken = broken_ep_demo\n")
    monkeypatch.syspath_prepend(str(site))
    saved = (METHODS._entry_points_loaded, list(METHODS.entry_point_records))
    METHODS._entry_points_loaded = False  # as in a fresh process, where they load on first use
    METHODS.entry_point_records.clear()
    yield site
    METHODS._entry_points_loaded, METHODS.entry_point_records[:] = saved[0], saved[1]
    METHODS.remove("ep_brightness")
    for mod in ("salbench_ep_demo.methods", "salbench_ep_demo", "broken_ep_demo"):
        sys.modules.pop(mod, None)


@pytest.mark.slow
def test_an_installed_entry_point_is_loaded_on_first_use_and_recorded(installed_package, tiny_zoo, tmp_path, capsys):
    from salbench.runner import run

    assert "ep_brightness" in METHODS  # first use of the registry loads the group
    err = capsys.readouterr().err
    assert "plugin 'broken'" in err and "RuntimeError: cannot start" in err and len(err.strip().splitlines()) == 1
    out = run(RunSpec(methods=["ep_brightness", "centre"], models=[tiny_zoo], dataset=DATA, batch_size=6, device="cpu"),
              tmp_path / "run", progress=False)
    loc = read_table(out, "localization")
    assert (loc["method"] == "ep_brightness").sum() == 12 and loc["error"].isna().all()
    meta = json.loads((out / "run.json").read_text())
    [rec] = meta["plugins"]
    assert rec == {"source": "demo = salbench_ep_demo.methods", "kind": "entry_point", "distribution": "salbench-ep-demo",
                   "version": "1.2.3", "methods": ["ep_brightness"]}
    from salbench.report import leaderboard_frame

    board = leaderboard_frame([out])
    assert board.loc[board["method"] == "ep_brightness", "family"].item() == "plugin"


def test_import_flag_loads_a_module_and_records_its_version(installed_package):
    METHODS.load_entry_points()
    METHODS.remove("ep_brightness")
    sys.modules.pop("salbench_ep_demo.methods", None)
    try:
        rec = plugins.load_plugin("salbench_ep_demo.methods")
        assert rec["kind"] == "module" and rec["version"] == "salbench-ep-demo 1.2.3" and rec["methods"] == ["ep_brightness"]
        assert rec["sha256"] == plugins._sha256(installed_package / "salbench_ep_demo" / "methods.py")
    finally:
        plugins._LOADED.pop("salbench_ep_demo.methods", None)


def _rank_main(rank: int, port: int, values: list[str], out) -> None:
    import os

    from salbench import distributed

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    shard = distributed.init_from_env("cpu")
    out.put((rank, distributed.all_equal(values[rank], shard)))
    distributed.shutdown(shard)


@pytest.mark.slow
@pytest.mark.parametrize("values,expected", [(["hash-a", "hash-a"], True), (["hash-a", "hash-b"], False)])
def test_torchrun_ranks_agree_on_whether_they_resolved_the_same_spec(values, expected):
    """Every rank gets the same answer, so all of them stop (none waits at a barrier) when one
    rank's plugin file differs."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(r, port, values, q)) for r in range(2)]
    for p in procs:
        p.start()
    answers = dict(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    assert answers == {0: expected, 1: expected}
