"""The store: one home for every cache, the layout earlier releases wrote, atomic writes, locks."""

from __future__ import annotations

import json
import pathlib
import threading
import time

import numpy as np
import platformdirs
import pytest

from salbench import casm, mapcache, results, store, zoo


def test_home_layout_is_the_one_existing_caches_use(tmp_path, monkeypatch):
    monkeypatch.delenv("SALBENCH_HOME", raising=False)
    assert store.home() == pathlib.Path(platformdirs.user_cache_dir("salbench"))
    monkeypatch.setenv("SALBENCH_HOME", str(tmp_path))
    assert store.home() == tmp_path
    assert [store.path(k) for k in ("zoo", "casm", "maps")] == [tmp_path / "zoo", tmp_path / "casm", tmp_path / "maps"]
    assert zoo.zoo_home() == tmp_path / "zoo" and casm.casm_home() == tmp_path / "casm" and mapcache.default_root() == tmp_path / "maps"
    assert zoo.zoo_dir("resnet").parent == tmp_path / "zoo"
    with pytest.raises(ValueError, match="unknown store kind"):
        store.path("elsewhere")


def test_atomic_writes_replace_whole_files_or_nothing(tmp_path):
    target = tmp_path / "sub" / "a.json"
    store.atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    with pytest.raises(RuntimeError), store.atomic_file(target) as f:
        f.write(b"half")
        raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}  # untouched
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]  # no temporary file left
    store.atomic_save_npy(tmp_path / "x.npy", np.arange(5))
    assert np.load(tmp_path / "x.npy").tolist() == [0, 1, 2, 3, 4]
    assert results.atomic_write_bytes is store.atomic_write_bytes and results.atomic_directory is store.atomic_directory


def test_lock_serialises_builders_of_one_artefact(tmp_path, monkeypatch):
    monkeypatch.setenv("SALBENCH_HOME", str(tmp_path))
    events = []

    def builder(tag):
        with store.lock("casm", "m-123"):
            events.append(f"{tag}+")
            time.sleep(0.05)
            events.append(f"{tag}-")

    threads = [threading.Thread(target=builder, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert events in (["a+", "a-", "b+", "b-"], ["b+", "b-", "a+", "a-"])
    assert (tmp_path / "casm" / ".locks" / "m-123.lock").is_file()


def test_one_versions_function():
    from salbench import runner, throughput

    assert runner.versions is store.versions and throughput.versions is store.versions
    v = store.versions()
    assert {"salbench", "python", "torch", "timm", "numpy", "opencv", "scikit-image", "pyarrow"} <= set(v)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_honour_the_umask(tmp_path, umask):
    """Results and caches shared with colleagues get the mode a plain open/mkdir would give them."""
    import os

    from salbench import store

    old = os.umask(umask)
    try:
        store.atomic_write_bytes(tmp_path / "f.bin", b"x")
        with store.atomic_directory(tmp_path / "d") as d:
            (d / "inside").write_bytes(b"y")
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask
