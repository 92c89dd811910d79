"""Wall-clock seconds per stage of a run, for run.json, ``salbench plan`` calibration and the docs.

A stage key is a ``/``-joined path: ``clean/<classifier>``, ``maps/<method>/<source>``,
``localize/<method>/<source>``, ``compose/<method>/<source>`` (masked and inpainted images),
``eval/<method>/<source>`` (eval classifiers' forwards), ``metrics/<method>/<source>`` (the
source-dependent and model-calling metrics). Device work is synchronised at the stage edges so a
GPU's asynchronous launches are charged to the stage that queued them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch

from salbench.device import synchronize


class StageClock:
    """Accumulates seconds per stage key; ``take()`` returns and resets them (one batch's worth)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, *key: str) -> Iterator[None]:
        synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.seconds["/".join(key)] += time.perf_counter() - t0

    def take(self) -> dict[str, float]:
        out = {k: round(v, 4) for k, v in self.seconds.items()}
        self.seconds.clear()
        return out


def add_seconds(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Sum per-stage seconds over batches (markers of a resumed run included)."""
    total: dict[str, float] = defaultdict(float)
    for part in parts:
        for k, v in part.items():
            total[k] += float(v)
    return {k: round(v, 3) for k, v in sorted(total.items())}


def by_stage(seconds: Mapping[str, float]) -> dict[str, float]:
    """Seconds per first path component (``maps``, ``eval``, ...): the stage table."""
    return add_seconds({k.split("/", 1)[0]: v} for k, v in seconds.items())


def by_method(seconds: Mapping[str, float], stage: str = "maps") -> dict[str, float]:
    """Seconds of ``stage`` per method, summed over source classifiers."""
    return add_seconds({k.split("/")[1]: v} for k, v in seconds.items() if k.startswith(stage + "/") and k.count("/") >= 1)
