"""The Python API for notebooks: ``evaluate`` a method next to the established ones.

```python
from salbench.api import evaluate, saliency_method

@saliency_method("brightness", classifier_dependent=False)
def brightness(classifier, images, targets):
    return images.mean(1)                      # B x H x W, non-negative

result = evaluate(methods=[brightness, "gradcam", "centre"], dataset="synthetic", models=["zoo:resnet"], limit=64)
result.leaderboard                              # pandas DataFrame, one row per (method, source classifier)
```

``evaluate`` builds a ``RunSpec`` and calls ``salbench.runner.run``, the function behind
``salbench run``: the same validation (one-line ``UsageError`` on bad input), ``resolve`` ->
``prepare`` -> ``Evaluator`` -> Parquet parts, the same run directory, run.json and spec hash, so
a notebook run and a CLI run of the same spec are the same run. ``methods`` mixes registered
names (and wildcards, and peer adapters such as ``captum:IntegratedGradients``), plugin files
(``"my_method.py"``: every method it registers) and functions (decorated with
``saliency_method``, or plain ``f(classifier, images, targets)``, registered under their name
with gradients enabled).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from salbench.config import RunSpec
from salbench.errors import UsageError
from salbench.methods.function import saliency_method
from salbench.plugins import is_plugin_file, load_plugin
from salbench.registry import DuplicateName
from salbench.results import read_table
from salbench.runner import run

__all__ = ["Result", "evaluate", "saliency_method"]


@dataclass
class Result:
    """A finished run: its directory and its tables as pandas DataFrames (read on first use)."""

    run_dir: Path
    _cache: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    @property
    def run(self) -> dict[str, Any]:
        """run.json: the resolved spec, its hash, versions, plugins, counts."""
        return json.loads((self.run_dir / "run.json").read_text())

    def _table(self, name: str) -> pd.DataFrame:
        if name not in self._cache:
            self._cache[name] = read_table(self.run_dir, name)
        return self._cache[name]

    @property
    def localization(self) -> pd.DataFrame:
        """One row per (image, method, source classifier): LE, OM, F1, mask statistics, error."""
        return self._table("localization")

    @property
    def agnosticism(self) -> pd.DataFrame:
        """One row per (image, method, source, eval classifier, image variant): top-1, top-5, CE, entropy."""
        return self._table("agnosticism")

    @functools.cached_property
    def leaderboard(self) -> pd.DataFrame:
        """The leaderboard's rows (as ``leaderboard.md`` shows them, with 95% intervals)."""
        from salbench.report import leaderboard_frame

        return leaderboard_frame([self.run_dir])

    def write_report(self) -> dict[str, Path]:
        """Write the report ``salbench run`` writes (leaderboard.md/.html, paper tables, figures)."""
        from salbench.report import write_report

        return write_report([self.run_dir], self.run_dir)["files"]


def _method_names(methods: Sequence[str | Callable[..., Any]]) -> tuple[list[str], list[str]]:
    """(method names for the spec, plugin files they came from)."""
    names: list[str] = []
    files: list[str] = []
    for m in methods:
        if callable(m):
            name = getattr(m, "__salbench_method__", None)
            if name is None:
                try:
                    saliency_method(m.__name__, needs_gradients=True)(m)
                except DuplicateName:
                    raise UsageError(f"function {m.__name__!r}: a method of that name is already registered; "
                                     f"register it under another with @saliency_method(name)") from None
                name = m.__name__
            names.append(name)
        elif isinstance(m, str) and m.endswith(".py") and is_plugin_file(m):
            record = load_plugin(m)
            files.append(m)
            names.extend(record["methods"])
        else:
            names.append(m)
    return list(dict.fromkeys(names)), files


def evaluate(methods: Sequence[str | Callable[..., Any]] = ("*",), dataset: str = "synthetic", models: Sequence[str] = ("zoo:*",),
             eval_models: Sequence[str] | None = None, limit: int | None = None, out: str | Path | None = None, *,
             plugins: Sequence[str] = (), method_params: dict[str, dict[str, Any]] | None = None, report: bool = False,
             resume: bool = False, progress: bool = False, results_root: str | Path = "results", **spec: Any) -> Result:
    """Run the benchmark on ``methods`` and return its ``Result``.

    ``plugins``: more plugin files / modules to load (the spec's ``plugins`` key); ``spec``: any
    other run-spec key (``batch_size``, ``seed``, ``device``, ``inpaint``, ``map_cache``, ...).
    ``out``: the run directory (default: ``results/<dataset>-<spec hash>-<time>``, as the CLI).
    ``report``: also write the report files (the CLI always does).
    """
    names, files = _method_names(list(methods))
    keys = dict(dataset=dataset, methods=names, models=list(models), eval_models=list(eval_models) if eval_models else None,
                limit=limit, method_params=dict(method_params or {}), plugins=list(dict.fromkeys([*plugins, *files])), **spec)
    run_spec = RunSpec.from_dict(keys, source="evaluate()")
    result = Result(run(run_spec, out, resume=resume, progress=progress, results_root=results_root))
    if report:
        result.write_report()
    return result
