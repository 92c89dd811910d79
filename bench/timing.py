"""Timing and peak memory of a code region, bracketed by device synchronisations.

``time_callable`` (warm-up, then timed calls, with ``MemoryProbe`` around the timed ones) is what
every throughput row is measured with; ``interleaved_times`` and ``ratio_of_medians`` compare two
implementations run back to back. What ``peak_mem_mb`` means per device: see ``MemoryProbe``.
"""

from __future__ import annotations

import ctypes
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from salbench.device import synchronize


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class MemoryProbe:
    """Peak memory of a code region (``kind`` says what was measured).

    * CUDA, ``cuda_max_allocated``: ``torch.cuda.max_memory_allocated`` over the region (reset at
      ``start``), i.e. everything the caching allocator handed out, weights included;
    * CPU on Linux, ``cpu_peak_rss_delta``: the process's peak resident set size during the
      region minus its resident size at ``start`` (the peak is reset through
      ``/proc/self/clear_refs``, freed heap is returned with ``malloc_trim`` first): the extra
      host memory the region needs, approximate since the C allocator may keep pages;
    * elsewhere ``unavailable`` and NaN.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "unavailable"
        self._base_kb = 0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda_max_allocated"
            return
        if self.device.type != "cpu":
            return
        _malloc_trim()  # tensors are freed by refcount; return their pages before the baseline
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
        except OSError:
            return
        rss = _proc_status_kb("VmRSS")
        if rss is not None:
            self._base_kb = rss
            self.kind = "cpu_peak_rss_delta"

    def stop(self) -> float:
        if self.kind == "cuda_max_allocated":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.kind == "cpu_peak_rss_delta":
            hwm = _proc_status_kb("VmHWM")
            return math.nan if hwm is None else max(0, hwm - self._base_kb) / 1024
        return math.nan


@dataclass
class Timing:
    times_ms: list[float]
    peak_mem_mb: float = math.nan
    mem_kind: str = "unavailable"

    @property
    def median_ms(self) -> float:
        return float(statistics.median(self.times_ms))

    @property
    def min_ms(self) -> float:
        return float(min(self.times_ms))

    @property
    def max_ms(self) -> float:
        return float(max(self.times_ms))


def time_callable(fn: Callable[[], Any], device: torch.device, *, iters: int = 10, warmup: int = 3, memory: bool = True) -> Timing:
    """``warmup`` untimed calls, then ``iters`` timed ones, each between device synchronisations."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    probe = MemoryProbe(device)
    if memory:
        probe.start()
    times = []
    for _ in range(iters):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    peak = probe.stop() if memory else math.nan
    return Timing(times, peak, probe.kind if memory else "unavailable")


def interleaved_times(fns: dict[str, Callable[[], Any]], device: torch.device, *, rounds: int = 5, warmup: int = 1) -> dict[str, list[float]]:
    """Time several callables round-robin (order reversed every other round), ms per call.

    Back-to-back in one process, so slow phases of a shared machine hit every callable alike;
    compare them with the median of per-round ratios.
    """
    names = list(fns)
    for _ in range(warmup):
        for k in names:
            fns[k]()
    out: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            synchronize(device)
            t0 = time.perf_counter()
            fns[k]()
            synchronize(device)
            out[k].append((time.perf_counter() - t0) * 1e3)
    return out


def ratio_of_medians(num: list[float], den: list[float]) -> float:
    """Median over rounds of ``num[i] / den[i]`` (paired, robust to machine-wide slow phases)."""
    return float(statistics.median(a / b for a, b in zip(num, den)))
