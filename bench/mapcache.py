"""Saliency-map cache: maps computed once, re-evaluated by later runs.

Adding an eval classifier, a binarisation or an inpainting backend changes a run's spec (and its
hash) but not its maps. With ``map_cache`` set, every (method, source classifier) batch of maps
is stored, compressed at the run's ``map_precision`` (``uint8``: 1/255 steps, ``float16`` or
``float32``), under a key hashing everything a map depends on: the dataset spec and image size,
the method and its parameters, the source classifier and its weights checksum, the target rule
the seed, and the code of the method (``code_digest``: the source files of its class and base
classes and of its ``code_objects``, e.g. the plain function a plugin registered or a peer
library's attribution class, since ``salbench_version`` does not change with every edit). A later run with the same
key loads the maps instead of recomputing them.

An entry is used only when it can be trusted: it stores the sha256 of the images it was computed
from (images changed in place on disk are *stale*), and it must be a whole archive (``allow_pickle``
off) holding finite maps in [0, 1] of the batch's shape (otherwise *corrupt*). A stale or corrupt
entry is recomputed and overwritten; ``load`` says which, and the runner counts both in run.json.

Maps are always rounded to ``map_precision`` before use, cached or not, so a run that reuses maps
writes exactly the rows of a fresh run. Files are per batch (``<first>-<last>.npz`` image index
range) and written atomically; a different batch size simply misses the cache.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import io
import json
import marshal
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salbench import store
from salbench.errors import UsageError
from salbench.store import atomic_write_bytes

PRECISIONS = ("float32", "float16", "uint8")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UsageError(f"map_precision={precision!r}: expected one of {', '.join(PRECISIONS)}")


def quantize(maps: torch.Tensor, precision: str) -> torch.Tensor:
    """Round maps in [0,1] to the storage precision (a no-op for float32)."""
    if precision == "uint8":
        return torch.round(maps.clamp(0, 1) * 255) / 255
    if precision == "float16":
        return maps.half().float()
    return maps


def default_root() -> Path:
    """Where ``map_cache: auto`` keeps maps: ``$SALBENCH_HOME/maps``."""
    return store.path("maps")


def map_key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:20]


def code_digest(obj: Any) -> str:
    """sha256 (16 hex) of the source files that define ``obj``'s class, its base classes and the
    objects it lists in ``code_objects`` (a plugin's function lives in the user's file, not in the
    wrapper class's), and those of any method it wraps (SmoothGrad's ``base``): the wrapped
    method's code makes its maps too."""
    wrapped = [type(v) for v in getattr(obj, "__dict__", {}).values() if hasattr(v, "attribute_with_diagnostics")]
    if not wrapped:
        return _type_digest(type(obj))
    return hashlib.sha256(" ".join(_type_digest(c) for c in [type(obj), *wrapped]).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def _type_digest(cls: type) -> str:
    h = hashlib.sha256()
    files: list[str] = []
    for c in (*cls.__mro__, *getattr(cls, "code_objects", ())):
        code = getattr(c, "__code__", None)
        if code is not None:  # a function: its compiled code too (one defined in a notebook has no file)
            h.update(marshal.dumps(code))
        try:
            path = inspect.getsourcefile(c)
        except (TypeError, OSError):  # builtins (object), functions without a source file
            continue
        if path and path not in files:
            files.append(path)
    for path in files:
        try:
            h.update(Path(path).read_bytes())
        except OSError:
            h.update(path.encode())
    return h.hexdigest()[:16]


def images_digest(images: torch.Tensor) -> str:
    """sha256 of a batch's pixels (what its maps were computed from)."""
    return hashlib.sha256(images.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()


class MapCache:
    """Per-batch map files under ``root/<key>/``; see the module docstring for what is trusted."""

    def __init__(self, root: str | Path, precision: str):
        check_precision(precision)
        self.root = Path(root)
        self.precision = precision

    def _path(self, key: str, index: torch.Tensor) -> Path:
        idx = index.tolist()
        return self.root / key / f"{idx[0]:08d}-{idx[-1]:08d}-{len(idx)}.npz"

    def load(self, key: str, index: torch.Tensor, images: str, shape: tuple[int, ...]) -> tuple[torch.Tensor | None, str]:
        """(maps, "hit") or (None, "miss" | "stale" | "corrupt"); ``images`` is ``images_digest`` of the batch."""
        path = self._path(key, index)
        if not path.is_file():
            return None, "miss"
        try:
            with np.load(path, allow_pickle=False) as z:
                if not np.array_equal(z["index"], index.cpu().numpy()):
                    return None, "miss"
                if "images" not in z.files or str(z["images"]) != images:
                    return None, "stale"
                arr = z["maps"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None, "corrupt"
        if arr.dtype not in (np.uint8, np.float16, np.float32) or tuple(arr.shape) != tuple(shape):
            return None, "corrupt"
        maps = torch.from_numpy(arr.astype(np.float32))
        maps = maps / 255 if arr.dtype == np.uint8 else maps
        if not torch.isfinite(maps).all() or maps.min() < 0 or maps.max() > 1:
            return None, "corrupt"
        return maps, "hit"

    def save(self, key: str, index: torch.Tensor, maps: torch.Tensor, meta: dict[str, Any], images: str) -> None:
        m = maps.detach().cpu()
        arr = (torch.round(m * 255).to(torch.uint8) if self.precision == "uint8" else m.half() if self.precision == "float16" else m.float()).numpy()
        buf = io.BytesIO()
        np.savez_compressed(buf, maps=arr, index=index.cpu().numpy(), images=np.array(images))
        atomic_write_bytes(self._path(key, index), buf.getvalue())
        info = self.root / key / "key.json"
        if not info.exists():
            atomic_write_bytes(info, json.dumps(meta, indent=1, sort_keys=True, default=str).encode())
