"""Reading a run-spec file (YAML, TOML, JSON) together with the line each YAML key is on.

Error messages about a spec loaded from YAML name the line (``line 7``); the lines come from the
node marks of ``yaml.compose``, so the values are the ones ``yaml.safe_load`` gives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from salbench.errors import UsageError

KeyLines = dict[tuple[str, ...], int]


def _yaml_key_lines(node: Any, prefix: tuple[str, ...] = ()) -> KeyLines:
    """1-based line of every mapping key, by key path (nested mappings included)."""
    import yaml

    lines: KeyLines = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                path = (*prefix, str(key_node.value).replace("-", "_") if not prefix else str(key_node.value))
                lines[path] = key_node.start_mark.line + 1
                lines.update(_yaml_key_lines(value_node, path))
    return lines


def read_spec_file(path: Path) -> tuple[Any, KeyLines]:
    """The parsed file and its key lines (empty for TOML and JSON); UsageError when unreadable."""
    if not path.is_file():
        raise UsageError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    lines: KeyLines = {}
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
            lines = _yaml_key_lines(yaml.compose(text, Loader=yaml.SafeLoader))
        elif path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise UsageError(f"config file {str(path)!r}: expected a .yaml, .yml, .toml or .json file")
    except UsageError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"config file {str(path)!r} is malformed: {first}") from None
    return data, lines


def line_of(lines: KeyLines, path: tuple[str, ...]) -> int | None:
    """The line of the deepest key of ``path`` that the file records."""
    for n in range(len(path), 0, -1):
        if tuple(path[:n]) in lines:
            return lines[tuple(path[:n])]
    return None
