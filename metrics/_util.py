"""Small helpers shared by the metric modules (not public API)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")
R = TypeVar("R")


def acc_dtype(device: torch.device) -> torch.dtype:
    """Accumulation dtype for counts and sums: float64 where the backend has it (not on MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def thread_map(fn: Callable[[T], R], items: Sequence[T], max_workers: int | None = None) -> list[R]:
    """``[fn(x) for x in items]`` over a thread pool, in order.

    Used only for the inherently per-image CPU steps (OpenCV / scikit-image inpainting, GrabCut);
    OpenCV and most of NumPy release the GIL, so threads give real parallelism without the
    pickling cost of processes.
    """
    n = len(items)
    if n == 0:
        return []
    workers = min(n, max_workers or os.cpu_count() or 1)
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def mask_keys(masks: torch.Tensor) -> list[bytes]:
    """One hashable key per binary mask of an N x ... stack (its bits packed): the per-batch caches
    of what was already composed or scored (the runner's eval logits, ROAD's scores) look them up."""
    packed = np.packbits(masks.reshape(len(masks), -1).to("cpu", torch.bool).numpy(), axis=1)
    return [row.tobytes() for row in packed]


def check_maps(m: torch.Tensor, what: str = "saliency maps") -> None:
    if m.ndim != 3:
        raise ValueError(f"{what} must be B x H x W, got shape {tuple(m.shape)}")
