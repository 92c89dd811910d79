"""Small value helpers shared by the zoo, CASM and the report: JSON-ready values, class lists."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np


def freeze(value: Any) -> Any:
    """Lists -> tuples, recursively (JSON round trips turn tuples into lists; timm wants tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, Mapping):
        return {str(k): freeze(v) for k, v in value.items()}
    return value


def jsonable(value: Any) -> Any:
    """Dataclasses -> dicts, mappings -> key-sorted dicts, tuples -> lists, NumPy scalars -> Python.

    Spec keys hash ``json.dumps(jsonable(spec))``: changing this changes every cache key.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def parse_classes(v: Any) -> set[int] | None:
    """A trained class subset: list of ints, or a string '0,1,5' / '0+1+5' / '0-4,7'; None when absent/all.

    Lenient, as a report reading other runs' parameters needs: anything it cannot read is None.
    """
    if v is None or v == "" or v == "all":
        return None
    if isinstance(v, (list, tuple, set)):
        try:
            return {int(x) for x in v} or None
        except (TypeError, ValueError):
            return None
    if isinstance(v, str):
        out: set[int] = set()
        for part in v.replace(" ", "").replace("+", ",").split(","):
            if not part:
                continue
            if re.fullmatch(r"\d+-\d+", part):
                a, b = map(int, part.split("-"))
                out.update(range(a, b + 1))
            elif part.isdigit():
                out.add(int(part))
            else:
                return None
        return out or None
    if isinstance(v, int):
        return {v}
    return None


__all__ = ["freeze", "jsonable", "parse_classes"]
