"""CASM's part of the store: trained maskers, their metadata, and resumable training state.

Layout under ``casm_home()`` = ``salbench.store.path("casm")`` (``$SALBENCH_HOME/casm``)::

    <name>-<spec key>/masker.safetensors   masker weights (encoder.* + decoder)
    <name>-<spec key>/meta.json            spec, architecture, normalisation, fill, timings, final stats
    <name>-<spec key>/log.jsonl            training log (step, losses, mask area, masked accuracy, ...)
    .work/<name>-<spec key>/state.pt       resumable training state (checkpointed every N steps)
    .work/<name>-<spec key>/log.jsonl      the log so far
    .locks/<name>-<spec key>.lock          held while the masker trains

Everything here is read as data, never as code: weights through safetensors, metadata as JSON
checked field by field before it builds a model, and the training state with
``torch.load(weights_only=True)`` (tensors and plain containers only) plus a check of its shape.
A planted or damaged ``state.pt`` is refused with a ``CheckpointError`` naming the file, never
executed; the user deletes it or retrains with ``--force``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import pickle
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from salbench import store
from salbench.casm.model import Masker
from salbench.casm.pool import snapshot
from salbench.casm.spec import CasmSpec
from salbench.errors import UsageError
from salbench.util import jsonable
from salbench.zoo import create_architecture

MASKER_FILE = "masker.safetensors"
META_FILE = "meta.json"
STATE_FILE = "state.pt"
LOG_FILE = "log.jsonl"


class CheckpointError(UsageError):
    """A cached CASM file is not what salbench writes (damaged, from another version, or planted)."""


def casm_home() -> pathlib.Path:
    """``$SALBENCH_HOME/casm`` (next to the zoo cache)."""
    return store.path("casm")


def masker_dir(spec: CasmSpec) -> pathlib.Path:
    return casm_home() / spec.dir_name


def work_dir(spec: CasmSpec) -> pathlib.Path:
    """Where an unfinished training run keeps its resumable state and log."""
    return casm_home() / ".work" / spec.dir_name


def training_lock(spec: CasmSpec):
    """The store lock held while ``spec``'s masker is checked for and trained."""
    return store.lock("casm", spec.dir_name)


def is_complete(d: pathlib.Path) -> bool:
    return (d / META_FILE).is_file() and (d / MASKER_FILE).is_file()


def is_trained(spec: CasmSpec) -> bool:
    return is_complete(masker_dir(spec))


# ----------------------------------------------------------------------------------------------
# Trained maskers


def write_masker(directory: str | os.PathLike, masker: Masker, meta: Mapping[str, Any]) -> pathlib.Path:
    """Write ``masker.safetensors`` and ``meta.json`` into ``directory`` (created if needed).
    ``meta`` must hold ``CasmTrainer.masker_meta()``'s fields; ``train`` adds spec, key and stats."""
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in snapshot(masker).items()}, str(d / MASKER_FILE), metadata={"name": str(meta.get("name", ""))})
    (d / META_FILE).write_text(json.dumps(jsonable(dict(meta)), indent=2) + "\n")
    return d


def resolve_checkpoint(path: str | os.PathLike) -> pathlib.Path:
    """A masker directory from a directory, or from its ``masker.safetensors`` / ``meta.json``."""
    p = pathlib.Path(path).expanduser()
    if p.is_file() and p.name in (MASKER_FILE, META_FILE):
        p = p.parent
    if not is_complete(p):
        raise UsageError(f"casm checkpoint {str(path)!r}: expected a directory with {MASKER_FILE} and {META_FILE} (salbench train casm writes one)")
    return p


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_list(v: Any, n: int | None = None) -> bool:
    return isinstance(v, list) and (n is None or len(v) == n) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)


#: meta.json fields that rebuild a masker, and the check each must pass.
_MASKER_FIELDS = {
    "arch": lambda v: isinstance(v, str) and bool(v),
    "model_kwargs": lambda v: isinstance(v, dict),
    "modifications": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "num_classes": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
    "mean": lambda v: isinstance(v, list) and len(v) == 3 and all(_is_number(x) for x in v),
    "std": lambda v: isinstance(v, list) and len(v) == 3 and all(_is_number(x) and x > 0 for x in v),
    "input_size": lambda v: _int_list(v, 3) and all(x > 0 for x in v),
    "decoder_channels": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
    "indices": lambda v: _int_list(v) and len(v) > 0,
    "interpolation": lambda v: isinstance(v, str),
}


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """A masker's meta.json, checked: every field that rebuilds the masker has the type it must."""
    d = resolve_checkpoint(path)
    try:
        meta = json.loads((d / META_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{d / META_FILE}: unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{d / META_FILE}: expected a JSON object")
    meta.setdefault("model_kwargs", {})
    meta.setdefault("modifications", [])
    meta.setdefault("interpolation", "bilinear")
    bad = [k for k, ok in _MASKER_FIELDS.items() if k not in meta or not ok(meta[k])]
    if bad:
        raise CheckpointError(f"{d / META_FILE}: missing or malformed field(s) {bad}; not a masker salbench wrote")
    if not isinstance(meta.get("spec", {}), dict):
        raise CheckpointError(f"{d / META_FILE}: field 'spec' must be an object")
    return meta


def load_masker(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Masker, dict[str, Any]]:
    """A trained masker (eval mode, on ``device``) and its meta, from a cache directory."""
    d = resolve_checkpoint(path)
    meta = read_meta(d)
    encoder = create_architecture(meta["arch"], meta["model_kwargs"], meta["modifications"], meta["num_classes"])
    masker = Masker(
        encoder, mean=meta["mean"], std=meta["std"], input_size=meta["input_size"], decoder_channels=meta["decoder_channels"],
        indices=meta["indices"], interpolation=meta["interpolation"],
    )
    masker.load_state_dict(load_file(str(d / MASKER_FILE), device="cpu"), strict=True)
    for p in masker.parameters():
        p.requires_grad_(False)
    return masker.eval().to(device), meta


def cached_maskers() -> dict[str, pathlib.Path]:
    """Complete masker directories in the cache, newest per name."""
    home = casm_home()
    out: dict[str, tuple[float, pathlib.Path]] = {}
    if not home.is_dir():
        return {}
    for d in home.iterdir():
        if d.name.startswith(".") or not d.is_dir() or not is_complete(d):
            continue
        try:
            meta = json.loads((d / META_FILE).read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str):
            continue
        t = (d / META_FILE).stat().st_mtime
        if name not in out or t > out[name][0]:
            out[name] = (t, d)
    return {k: v[1] for k, v in sorted(out.items())}


# ----------------------------------------------------------------------------------------------
# Resumable training state


def save_training_state(path: pathlib.Path, key: str, trainer_state: Mapping[str, Any], train_time_s: float) -> None:
    """Write the resumable state atomically (``torch.save`` of tensors and plain containers)."""
    with store.atomic_file(path) as f:
        torch.save({"key": key, "trainer": dict(trainer_state), "train_time_s": float(train_time_s)}, f)


def load_training_state(path: pathlib.Path, key: str) -> dict[str, Any]:
    """The resumable state at ``path`` for the masker with spec key ``key``.

    Loaded with ``weights_only=True``: a file holding anything but tensors and plain containers
    (a pickled object whose loading would run code) is refused, as is one whose fields are not
    what ``save_training_state`` writes or whose key is another masker's. Raises ``CheckpointError``.
    """
    refuse = f"{path}: refusing to resume from this file"
    hint = "delete it (or train with --force) to start from step 0"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{refuse}: it is not a salbench training state ({first}); {hint}") from None
    if not isinstance(state, dict) or not isinstance(state.get("trainer"), dict) or not _is_number(state.get("train_time_s")):
        raise CheckpointError(f"{refuse}: it does not have the fields of a salbench training state; {hint}")
    if state.get("key") != key:
        raise CheckpointError(f"{refuse}: it belongs to masker key {state.get('key')!r}, not {key!r}; {hint}")
    return state


def read_log(path: pathlib.Path, before_step: int | None = None) -> list[dict[str, Any]]:
    """Training-log rows (JSON lines; unreadable lines skipped), up to ``before_step``."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            step = row.get("step", 0) if isinstance(row, dict) else None
            if _is_number(step) and (before_step is None or step <= before_step):
                rows.append(row)
    return rows


def write_log(path: pathlib.Path, rows: Iterable[Mapping[str, Any]]) -> None:
    store.atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


__all__ = [
    "CheckpointError",
    "cached_maskers",
    "casm_home",
    "is_complete",
    "is_trained",
    "load_masker",
    "load_training_state",
    "masker_dir",
    "read_log",
    "read_meta",
    "resolve_checkpoint",
    "save_training_state",
    "training_lock",
    "work_dir",
    "write_log",
    "write_masker",
]
