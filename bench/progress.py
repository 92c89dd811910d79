"""Progress of a run within its batches: which (method, source classifier) pair runs, how much of
the run is done, and an ETA that starts from the cost plan's estimate.

A real-size batch can take many minutes (every method at 224 px on a CPU), so a bar that moves
only per batch looks stuck. The bar advances after every (method, source) pair by that pair's
share of the plan (estimated seconds when the speeds are known, else forward-equivalents); the
ETA is the plan's estimate until the first pair finishes, then the observed rate extrapolated.
"""

from __future__ import annotations

import time

from tqdm.auto import tqdm

from salbench.plan import Plan


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class RunProgress:
    """A tqdm bar over the pending images of a run, weighted by the plan."""

    def __init__(self, plan: Plan, pending_images: int, desc: str, disable: bool = False):
        secs = plan.pair_seconds()
        timed = plan.total_seconds is not None
        weights = secs if timed else plan.pair_work()
        n = max(plan.images, 1)
        self.per_image = {pair: w / n for pair, w in weights.items()}
        clean = sum((r.seconds or 0.0) if timed else r.total_forwards for r in plan.rows if r.method == "-")
        self.clean_per_image = clean / n
        total = (sum(self.per_image.values()) + self.clean_per_image) * pending_images
        self.estimate = plan.total_seconds * pending_images / n if timed else None
        self.desc = desc
        self.total = max(total, 1e-9)
        self.done = 0.0
        self.bar = tqdm(total=self.total, disable=disable, dynamic_ncols=True, desc=desc,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}{postfix}")
        self.t0 = time.perf_counter()
        self.batch_images = 0
        self.label = ""
        self.seen: set[tuple[str, str]] = set()
        self.current: tuple[str, str] | None = None
        self._postfix()

    def start_batch(self, position: int, of: int, images: int) -> None:
        self.batch_images = images
        self.seen = set()
        self.label = f"batch {position}/{of}"
        self._advance(self.clean_per_image * images)
        self._postfix()

    def step(self, method: str, source: str) -> None:
        """The (method, source) pair ``method`` @ ``source`` of the current batch starts (the
        previous one is done)."""
        self._finish()
        self.current = (method, source)
        self.bar.set_description_str(f"{self.desc} · {self.label} · {method} @ {source}", refresh=False)
        self._postfix()

    def _finish(self) -> None:
        if self.current is None:
            return
        method, source = self.current
        key = (method, source) if (method, source) in self.per_image else (method, "*")
        if key not in self.seen:  # a classifier-independent method's maps are made once per batch
            self.seen.add(key)
            self._advance(self.per_image.get(key, 0.0) * self.batch_images)
        self.current = None

    def _advance(self, amount: float) -> None:
        self.done += amount
        self.bar.update(amount)

    def end_batch(self, maps: int, errors: int) -> None:
        self._finish()
        self.bar.set_postfix_str(f"{self._eta()} · maps {maps} · errors {errors}")

    def _eta(self) -> str:
        done = self.done / self.total
        elapsed = time.perf_counter() - self.t0
        if done > 0.02 and elapsed > 1:
            return f"eta {_clock(elapsed * (1 - done) / done)}"
        if self.estimate is not None:
            return f"eta {_clock(self.estimate * (1 - done))} (plan)"
        return "eta: after the first steps"

    def _postfix(self) -> None:
        self.bar.set_postfix_str(self._eta())

    def close(self) -> None:
        self.bar.close()
