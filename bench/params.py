"""Validation of declared parameters (a method's or a metric's frozen ``Params`` dataclass).

One rule for both registries: unknown keys and wrong scalar types are refused with one line
naming the kind, the name, the key and the value (``SpecError``, exit 2), before any work.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from salbench.errors import SpecError, close_matches

_SCALAR_TYPES = {int: int, float: float, str: str, bool: bool}
_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def check_params(kind: str, name: str, params_cls: type, params: dict[str, Any]) -> Any:
    """``params_cls(**params)`` for the ``kind`` (``"method"`` / ``"metric"``) called ``name``."""
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    hints = typing.get_type_hints(params_cls)
    for key, value in params.items():
        if key not in fields:
            raise SpecError((key,), f"{kind} {name!r} has no parameter {key!r} (given {value!r}){close_matches(key, fields)}; parameters: {', '.join(fields) or 'none'}")
        expected = _SCALAR_TYPES.get(_strip_optional(hints[key]))
        if expected is not None and not (value is None and _is_optional(hints[key])) and not _is_instance(value, expected):
            raise SpecError((key,), f"{kind} {name!r}: {key}={value!r}: expected {_TYPE_WORDS[expected]}")
    try:
        return params_cls(**params)
    except (TypeError, ValueError) as exc:
        key = next((k for k in params if str(exc).startswith(f"{k}=")), None)
        raise SpecError((key,) if key else (), f"{kind} {name!r}: {str(exc) if key else f'bad parameters {params}: {exc}'}") from None


def _is_optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def _strip_optional(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if _is_optional(hint) and len(args) == 1 else hint


def _is_instance(value: Any, expected: type) -> bool:
    """Strict scalar check: a bool is not an int, an int is a float, nothing else converts."""
    if expected is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) if expected is float else isinstance(value, expected)
