"""What a finished run records about itself: per-image load errors and whether it failed.

Both are computed from what the run wrote (its rows and counts), not from state held in the
process, so they hold with DataLoader workers (which load images in other processes), several
ranks and resumed runs alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from salbench.errors import SalbenchError
from salbench.results import read_table


class RunFailed(SalbenchError):
    """Every (image, method, source) row of a run is an error: no map was computed (exit 1)."""


def load_errors(run_dir: Path) -> dict[str, Any]:
    """Images that could not be loaded: ``{"counts": {kind: n}, "images": [{image_id, error}]}``.

    A load-error row is a localisation row with an error and no ``source_correct``: the image
    never reached the source classifier (a method's error row has the clean prediction).
    """
    rows = read_table(run_dir, "localization", columns=["image_id", "error", "source_correct"])
    bad = rows[rows["error"].notna() & rows["source_correct"].isna()].drop_duplicates("image_id").sort_values("image_id")
    counts: dict[str, int] = {}
    for err in bad["error"]:
        kind = str(err).split(":", 1)[0].strip().replace(" ", "_") or "load_error"
        counts[kind] = counts.get(kind, 0) + 1
    images = [{"image_id": str(i), "error": str(e)} for i, e in zip(bad["image_id"], bad["error"])]
    return {"counts": dict(sorted(counts.items())), "images": images}


def all_failed(counts: dict[str, int]) -> bool:
    """No map was computed and there were errors: the run produced nothing to evaluate."""
    return counts.get("maps", 0) == 0 and counts.get("errors", 0) + counts.get("load_errors", 0) > 0
