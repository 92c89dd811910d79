"""Permissions of files and folders salbench creates through ``tempfile`` (atomic writes).

``tempfile.mkstemp`` creates files 0600 and ``mkdtemp`` folders 0700 whatever the umask, so a
result or cache renamed into place from them would be private where ``open``/``mkdir`` would
have made it group- or world-readable. ``apply_umask`` gives such a path the mode a plain
``open``/``mkdir`` would have given it under the process's umask.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Literal

Kind = Literal["file", "dir"]

_BASE = {"file": 0o666, "dir": 0o777}
_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (reading it means setting it; done under a lock and restored at once)."""
    with _LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def umask_mode(kind: Kind) -> int:
    """The mode ``open`` (kind "file") or ``mkdir`` (kind "dir") gives a new path under the umask."""
    if kind not in _BASE:
        raise ValueError(f"kind={kind!r}: expected 'file' or 'dir'")
    return _BASE[kind] & ~current_umask()


def apply_umask(path: str | os.PathLike[str], kind: Kind) -> None:
    """chmod a path made by ``mkstemp`` (kind "file") or ``mkdtemp`` (kind "dir") to the mode the
    umask would have given it; call it before the path is renamed into place."""
    os.chmod(Path(path), umask_mode(kind))
