"""Faithfulness metrics against their per-image peers, on the same model, images and maps.

* ROAD: salbench's batched imputation and scoring vs pytorch-grad-cam's ``ROADMostRelevantFirst``
  / ``ROADLeastRelevantFirst`` (one scipy ``spsolve`` and one forward per image and fraction);
* deletion + insertion: the batched metric vs the same computation as a per-image loop (the RISE
  code's ``CausalMetric.single_run``: one image, one step, one forward), and vs Quantus'
  ``PixelFlipping`` (deletion only) where installed.

Timed in interleaved rounds in one process (``salbench.timing``); ratios are medians of per-round
ratios. ``faithfulness_comparison`` returns the lines ``tests/benchmarks`` and the README quote.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from salbench.datasets.base import Batch
from salbench.metrics import MapContext
from salbench.metrics.deletion import Deletion, Insertion, blur_substrate
from salbench.timing import interleaved_times, ratio_of_medians


@dataclass
class FaithfulnessTiming:
    what: str
    peer: str
    images: int
    ours_ms: float  # median ms for the whole batch
    peer_ms: float
    speedup: float  # median of per-round peer / ours

    def line(self) -> str:
        return (f"{self.what:<20} vs {self.peer:<36} {self.images} images: salbench {self.ours_ms:9.1f} ms, "
                f"peer {self.peer_ms:9.1f} ms, {self.speedup:6.1f}x")


def model_context(clf, x: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor) -> MapContext:
    """A ``MapContext`` for the model metrics outside a run (one source classifier)."""
    n = len(x)
    batch = Batch(index=torch.arange(n), ids=[str(i) for i in range(n)], images=x, labels=targets, boxes=torch.zeros(n, 1, 4),
                  box_valid=torch.zeros(n, 1, dtype=torch.bool))
    with torch.no_grad():
        clean = clf(x)
    return MapContext(maps=maps, binary=maps > 0.5, box=torch.zeros(n, 4), box_valid=torch.zeros(n, dtype=torch.bool), batch=batch,
                      targets=targets, classifiers={"src": clf}, source_model="src", eval_models=("src",), logits_clean={"src": clean}, shared={})


@torch.no_grad()
def causal_per_image(clf, x: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor, steps: int, sigma: float) -> np.ndarray:
    """Deletion and insertion AUCs the RISE way: per image, per step, one forward (the loop the
    batched metric replaces); ties in argsort order, as the RISE code."""
    out = []
    hw = maps.shape[-1] * maps.shape[-2]
    for i in range(len(x)):
        img = x[i:i + 1]
        order = torch.argsort(maps[i].flatten(), descending=True)
        aucs = []
        for start, finish in ((img.clone(), torch.zeros_like(img)), (blur_substrate(img, sigma), img.clone())):
            cur = start.clone().view(1, 3, -1)
            scores = []
            for k in range(steps + 1):
                scores.append(float(torch.softmax(clf(cur.view_as(img)), 1)[0, targets[i]]))
                if k < steps:
                    idx = order[(k * hw) // steps:((k + 1) * hw) // steps]
                    cur[:, :, idx] = finish.view(1, 3, -1)[:, :, idx]
            s = np.asarray(scores)
            aucs.append((s.sum() - s[0] / 2 - s[-1] / 2) / steps)
        out.append(aucs)
    return np.asarray(out)


def faithfulness_comparison(clf, x: torch.Tensor, maps: torch.Tensor, *, steps: int = 16, fractions: tuple[float, ...] = (0.2, 0.5, 0.8),
                            rounds: int = 3, peer_images: int | None = None) -> list[FaithfulnessTiming]:
    """Time ROAD, deletion + insertion and their peers on ``clf`` with images ``x`` and ``maps``;
    per-image peers run on the first ``peer_images`` images and are scaled to the batch."""
    from salbench.metrics.road import Road

    device = x.device
    with torch.no_grad():
        t = clf(x).argmax(1)
    n = len(x)
    k = min(n, peer_images or n)
    sigma = 5.0 * x.shape[-1] / 224
    ours_causal = (Deletion(steps=steps), Insertion(steps=steps, sigma=sigma))
    road = Road(fractions=fractions)
    results = []
    fns = {"ours": lambda: [m.compute(model_context(clf, x, maps, t)) for m in ours_causal],
           "loop": lambda: causal_per_image(clf, x[:k], maps[:k], t[:k], steps, sigma)}
    times = interleaved_times(fns, device, rounds=rounds)
    scaled = [v * n / k for v in times["loop"]]
    results.append(FaithfulnessTiming("deletion+insertion", "per-image loop (RISE CausalMetric)", n, float(np.median(times["ours"])),
                                      float(np.median(scaled)), ratio_of_medians(scaled, times["ours"])))
    if importlib.util.find_spec("quantus") is not None:
        import quantus

        side = x.shape[-1]
        feats = side * side // steps  # Quantus wants a divisor of H*W; steps * 3 perturbations of the flat 3*H*W values
        pf = quantus.PixelFlipping(features_in_step=feats, perturb_baseline=0.0, normalise=False, abs=False, disable_warnings=True,
                                   display_progressbar=False)
        clf.eval()
        xs, ts, ms = x[:k].cpu().numpy(), t[:k].cpu().numpy(), maps[:k, None].cpu().numpy()

        def quantus_run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return pf(model=clf, x_batch=xs, y_batch=ts, a_batch=ms, device=str(device), softmax=True)

        ours_del = Deletion(steps=3 * steps)  # the same number of forwards per image as Quantus' 3 * steps
        times = interleaved_times({"ours": lambda: ours_del.compute(model_context(clf, x, maps, t)), "quantus": quantus_run}, device, rounds=rounds)
        scaled = [v * n / k for v in times["quantus"]]
        results.append(FaithfulnessTiming("deletion", f"quantus PixelFlipping ({3 * steps} steps)", n, float(np.median(times["ours"])),
                                          float(np.median(scaled)), ratio_of_medians(scaled, times["ours"])))
    if importlib.util.find_spec("pytorch_grad_cam") is not None:
        from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

        targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in t[:k]]
        peers = [cls(percentile=round(100 * (1 - f))) for f in fractions for cls in (ROADMostRelevantFirst, ROADLeastRelevantFirst)]
        cams = maps[:k].cpu().numpy()

        def gradcam_road():
            return [m(x[:k], cams, targets, clf, return_diff=False) for m in peers]

        times = interleaved_times({"ours": lambda: road.compute(model_context(clf, x, maps, t)), "grad-cam": gradcam_road}, device, rounds=rounds)
        scaled = [v * n / k for v in times["grad-cam"]]
        results.append(FaithfulnessTiming(f"ROAD {len(fractions)} fractions x 2", "pytorch-grad-cam ROAD (MoRF + LeRF)", n,
                                          float(np.median(times["ours"])), float(np.median(scaled)), ratio_of_medians(scaled, times["ours"])))
    return results
