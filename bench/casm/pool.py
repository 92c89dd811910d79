"""The classifier pool F^(k) of Algorithm 1: the live classifier plus snapshots kept by a thinning rule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from salbench.casm.spec import Thinning


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of a state dict (what a pool member costs: one copy of the weights)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class ClassifierPool:
    """F^(k): the live current classifier plus versioned CPU snapshots, kept by a thinning rule.

    ``observe(version, model)`` is called with f^(0) and after every classifier update;
    ``sample(step)`` returns ``None`` for the current classifier or a snapshot index. Eviction and
    sampling draw from generators seeded by (seed, version) and (seed, step): deterministic, and
    independent of how the run was interrupted and resumed.
    """

    def __init__(self, thinning: Thinning, seed: int = 0):
        self.thinning = thinning
        self.seed = int(seed)
        self.snapshots: list[tuple[int, dict[str, torch.Tensor]]] = []
        self.current_version = 0

    def wants(self, version: int) -> bool:
        t = self.thinning
        if version == 0:
            return t.keep_first
        return t.every is not None and version % t.every == 0

    def observe(self, version: int, model: nn.Module | None) -> None:
        self.current_version = version
        if not self.wants(version):
            return
        entry = (version, snapshot(model) if model is not None else {})
        if len(self.snapshots) < self.thinning.max_size:
            self.snapshots.append(entry)
        else:
            j = int(np.random.default_rng([self.seed, 11, version]).integers(len(self.snapshots)))
            self.snapshots[j] = entry

    def members(self) -> list[int]:
        """Versions of the classifiers in F^(k), sorted, without duplicates (the current one
        included when it can be drawn)."""
        out = {v for v, _ in self.snapshots}
        if self.thinning.p_current > 0 or not self.snapshots:
            out.add(self.current_version)
        return sorted(out)

    def sample(self, step: int) -> int | None:
        if not self.snapshots:
            return None
        rng = np.random.default_rng([self.seed, 13, step])
        if rng.random() < self.thinning.p_current:
            return None
        return int(rng.integers(len(self.snapshots)))

    def state(self) -> dict[str, Any]:
        """Plain containers of ints and tensors: loadable with ``torch.load(weights_only=True)``."""
        return {"snapshots": [[int(v), sd] for v, sd in self.snapshots], "current_version": int(self.current_version)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        snaps = state["snapshots"]
        if not isinstance(snaps, (list, tuple)) or len(snaps) > self.thinning.max_size:
            raise ValueError(f"pool state: expected at most {self.thinning.max_size} snapshots")
        out = []
        for entry in snaps:
            version, sd = entry
            if not isinstance(version, int) or not isinstance(sd, Mapping) or not all(isinstance(t, torch.Tensor) for t in sd.values()):
                raise ValueError("pool state: a snapshot is not (version, state dict of tensors)")
            out.append((int(version), dict(sd)))
        self.snapshots = out
        self.current_version = int(state["current_version"])


__all__ = ["ClassifierPool", "snapshot"]
