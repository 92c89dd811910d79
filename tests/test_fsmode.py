"""Files and folders made with tempfile get the umask's mode, not 0600/0700."""

from __future__ import annotations

import os
import stat
import tempfile

import pytest

from salbench.fsmode import apply_umask, current_umask, umask_mode


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_umask_mode(umask):
    assert current_umask() == umask
    assert umask_mode("file") == 0o666 & ~umask
    assert umask_mode("dir") == 0o777 & ~umask
    with pytest.raises(ValueError):
        umask_mode("link")  # type: ignore[arg-type]


def test_apply_umask_matches_open_and_mkdir(tmp_path, umask):
    fd, tmp_file = tempfile.mkstemp(dir=tmp_path)
    os.close(fd)
    tmp_dir = tempfile.mkdtemp(dir=tmp_path)
    assert stat.S_IMODE(os.stat(tmp_file).st_mode) == 0o600 and stat.S_IMODE(os.stat(tmp_dir).st_mode) == 0o700
    apply_umask(tmp_file, "file")
    apply_umask(tmp_dir, "dir")
    (tmp_path / "plain.txt").write_text("x")
    (tmp_path / "plain").mkdir()
    assert stat.S_IMODE(os.stat(tmp_file).st_mode) == stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(os.stat(tmp_dir).st_mode) == stat.S_IMODE(os.stat(tmp_path / "plain").st_mode) == 0o777 & ~umask
