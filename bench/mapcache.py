"""Saliency-map cache: maps computed once, re-evaluated by later runs.

Adding an eval classifier, a binarisation or an inpainting backend changes a run's spec (and its
hash) but not its maps. With ``map_cache`` set, every (method, source classifier) batch of maps
is stored, compressed at the run's ``map_precision`` (``uint8``: 1/255 steps, ``float16`` or
``float32``), under a key hashing everything a map depends on: the dataset spec and image size,
the method and its parameters, the source classifier and its weights checksum, the target rule
and the seed. A later run with the same key loads the maps instead of recomputing them.

Maps are always rounded to ``map_precision`` before use, cached or not, so a run that reuses maps
writes exactly the rows of a fresh run. Files are per batch (``<first>-<last>.npz`` image index
range) and written atomically; a different batch size simply misses the cache.
"""

from __future__ import annotations

import hashlib
import io
import json
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


class MapCache:
    def __init__(self, root: str | Path, precision: str):
        check_precision(precision)
        self.root = Path(root)
        self.precision = precision

    def _path(self, key: str, index: torch.Tensor) -> Path:
        idx = index.tolist()
        return self.root / key / f"{idx[0]:08d}-{idx[-1]:08d}-{len(idx)}.npz"

    def load(self, key: str, index: torch.Tensor) -> torch.Tensor | None:
        path = self._path(key, index)
        if not path.is_file():
            return None
        try:
            with np.load(path) as z:
                if not np.array_equal(z["index"], index.cpu().numpy()):
                    return None
                arr = z["maps"]
        except (OSError, ValueError, KeyError):
            return None  # unreadable entry: recompute (and overwrite)
        maps = torch.from_numpy(arr.astype(np.float32))
        return maps / 255 if arr.dtype == np.uint8 else maps

    def save(self, key: str, index: torch.Tensor, maps: torch.Tensor, meta: dict[str, Any]) -> None:
        m = maps.detach().cpu()
        arr = (torch.round(m * 255).to(torch.uint8) if self.precision == "uint8" else m.half() if self.precision == "float16" else m.float()).numpy()
        buf = io.BytesIO()
        np.savez_compressed(buf, maps=arr, index=index.cpu().numpy())
        atomic_write_bytes(self._path(key, index), buf.getvalue())
        info = self.root / key / "key.json"
        if not info.exists():
            atomic_write_bytes(info, json.dumps(meta, indent=1, sort_keys=True, default=str).encode())
