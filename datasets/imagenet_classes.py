"""The ImageNet-1k class table in timm's order: wnids and their lemmas.

Its own module because both the ImageNet-val reader (``imagenet``) and the generic image folder
(``folder``, ``classes=imagenet``) need it, and ``imagenet`` builds on ``folder``.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path


def _timm_info_file(name: str) -> Path | None:
    """A file of timm's ``data/_info`` folder, found without importing timm (which is slow)."""
    spec = importlib.util.find_spec("timm")
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        p = Path(loc) / "data" / "_info" / name
        if p.is_file():
            return p
    return None


@functools.lru_cache(maxsize=1)
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 ILSVRC2012 wnids in timm's standard class order (sorted).

    Read from the ``imagenet_synsets.txt`` that timm ships (what ``timm.data.ImageNetInfo``
    reads), falling back to ``ImageNetInfo`` itself.
    """
    p = _timm_info_file("imagenet_synsets.txt")
    if p is not None:
        names = tuple(ln.strip() for ln in p.read_text().splitlines() if ln.strip())
    else:  # timm is slow to import: only when its data file is not where we look
        from timm.data import ImageNetInfo

        names = tuple(ImageNetInfo("imagenet-1k").label_names())
    if len(names) != 1000:
        raise RuntimeError(f"timm's ImageNet-1k synset list has {len(names)} entries, expected 1000")
    return names


@functools.lru_cache(maxsize=1)
def synset_index() -> dict[str, int]:
    return {s: i for i, s in enumerate(imagenet_synsets())}


@functools.lru_cache(maxsize=1)
def synset_lemmas() -> tuple[str, ...]:
    """Readable names (``"tench, Tinca tinca"``) in class order (the wnid where none is known)."""
    p = _timm_info_file("imagenet_synset_to_lemma.txt")
    lemmas: dict[str, str] = {}
    if p is not None:
        for ln in p.read_text().splitlines():
            wnid, _, lemma = ln.partition("\t")
            lemmas[wnid.strip()] = lemma.strip()
    return tuple(lemmas.get(s, s) for s in imagenet_synsets())
