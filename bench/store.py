"""``$SALBENCH_HOME``: the one place that knows where salbench keeps what it trains and caches.

Layout (unchanged from earlier releases, so existing caches stay valid)::

    $SALBENCH_HOME/zoo/     trained zoo classifiers and rendered synthetic data (salbench.zoo)
    $SALBENCH_HOME/casm/    trained CASM maskers and resumable training state (salbench.casm)
    $SALBENCH_HOME/maps/    the saliency-map cache of ``map_cache: auto`` (salbench.mapcache)
    $SALBENCH_HOME/sanity/  randomised classifier copies of the sanity checks (salbench.randomise)
    <kind>/.locks/<name>.lock   one lock file per artefact being built (concurrent builders wait)

``$SALBENCH_HOME`` defaults to ``platformdirs.user_cache_dir("salbench")``.

Also here, because every cache writer needs them: atomic writes (a temporary file in the target's
folder, fsync, one rename; or a whole folder swapped in by rename), and ``versions()``, the
provenance every artefact and run records.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version as dist_version
from pathlib import Path
from typing import IO, Any

import numpy as np
import platformdirs
import pyarrow as pa
import torch

from salbench import __version__
from salbench.fsmode import apply_umask

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: locks degrade to no-ops
    fcntl = None

KINDS = ("zoo", "casm", "maps", "sanity")


def home() -> Path:
    """``$SALBENCH_HOME`` (default ``platformdirs.user_cache_dir("salbench")``)."""
    root = os.environ.get("SALBENCH_HOME") or platformdirs.user_cache_dir("salbench")
    return Path(root).expanduser()


def path(kind: str) -> Path:
    """The folder of one kind of artefact: ``home() / kind`` for ``zoo``, ``casm``, ``maps`` or ``sanity``."""
    if kind not in KINDS:
        raise ValueError(f"unknown store kind {kind!r}; expected one of {', '.join(KINDS)}")
    return home() / kind


@contextlib.contextmanager
def lock(kind: str, name: str) -> Iterator[None]:
    """An exclusive lock on artefact ``name`` of ``kind`` (``<kind>/.locks/<name>.lock``).

    Builders hold it while they check the cache and build, so two processes never train the same
    artefact at once: the second waits and then finds it built. A no-op where ``fcntl`` is missing.
    """
    lock_dir = path(kind) / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    with open(lock_dir / f"{name}.lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# ----------------------------------------------------------------------------------------------
# Atomic writes


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file that replaces ``target`` in one rename when the block ends without error.

    Written to a temporary file in the same folder and fsynced first, so readers see the old file
    or the complete new one; on an error the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        apply_umask(tmp, "file")  # mkstemp makes 0600 whatever the umask: shared results stay readable
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically (see ``atomic_file``)."""
    with atomic_file(target) as f:
        f.write(data)


def atomic_write_json(target: str | os.PathLike, obj: Any) -> None:
    """Pretty, key-sorted JSON written atomically (non-JSON values as ``str``)."""
    atomic_write_bytes(target, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_save_npy(target: str | os.PathLike, array: np.ndarray) -> None:
    """``numpy.save`` written atomically (the zoo's rendered images and labels)."""
    with atomic_file(target) as f:
        np.save(f, array)


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Fill a fresh folder beside ``final`` (yielded), then swap it in with one rename.

    A ``final`` that exists (a forced rebuild, or a broken leftover) is moved aside first and
    deleted after the swap, so readers see the old folder or the new one, never a partial one.
    If the body raises, the temporary folder is deleted and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        apply_umask(tmp, "dir")  # mkdtemp makes 0700 whatever the umask
        yield tmp
        old = None
        if final.exists():
            old = final.parent / f".old-{final.name}-{os.getpid()}-{time.time_ns()}"
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Provenance


def _dist_version(dist: str) -> str:
    try:
        return dist_version(dist)
    except PackageNotFoundError:  # pragma: no cover - metadata missing
        return "unknown"


def versions() -> dict[str, str]:
    """Versions of everything that can change a number salbench writes.

    salbench, python, torch, timm, numpy, opencv, scikit-image, pyarrow; ``cuda``/``cudnn`` where
    CUDA is available; ``captum``/``grad-cam`` when they are loaded (throughput peer comparisons).
    """
    # timm, cv2 and skimage are imported here only: they are heavy, and only provenance needs them
    # in the modules that import the store (results I/O, reports)
    import cv2
    import skimage
    import timm

    v = {
        "salbench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "scikit-image": skimage.__version__,
        "pyarrow": pa.__version__,
    }
    if torch.cuda.is_available():
        v["cuda"] = str(torch.version.cuda)
        v["cudnn"] = str(torch.backends.cudnn.version())
    for module, dist in (("captum", "captum"), ("pytorch_grad_cam", "grad-cam")):
        if module in sys.modules:
            v[dist] = _dist_version(dist)
    return v


__all__ = [
    "KINDS",
    "atomic_directory",
    "atomic_file",
    "atomic_save_npy",
    "atomic_write_bytes",
    "atomic_write_json",
    "home",
    "lock",
    "path",
    "versions",
]
