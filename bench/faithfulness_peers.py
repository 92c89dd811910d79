"""Faithfulness metrics against their per-image peers, on the same model, images and maps.

* ROAD: salbench's batched imputation and scoring vs pytorch-grad-cam's ``ROADMostRelevantFirst``
  / ``ROADLeastRelevantFirst`` (one scipy ``spsolve`` and one forward per image and fraction);
* deletion + insertion: the batched metric vs the same computation as a per-image loop (the RISE
  code's ``CausalMetric.single_run``: one image, one step, one forward), and vs Quantus'
  ``PixelFlipping`` (deletion only) where installed.

Timed in interleaved rounds in one process (``salbench.timing``); ratios are medians of per-round
ratios. ``faithfulness_comparison`` returns ``PeerResult`` rows, which ``salbench throughput
--peers`` prints and writes as ``kind="peer"`` rows beside the gradient / Grad-CAM peers.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import warnings

import numpy as np
import torch

from salbench.datasets.base import Batch
from salbench.device import device_name, resolve_device
from salbench.methods import create_method
from salbench.metrics import MapContext
from salbench.metrics.deletion import Deletion, Insertion, blur_substrate
from salbench.peers import PeerResult
from salbench.throughput_setup import load_for_throughput, model_spec, synthetic_inputs
from salbench.timing import interleaved_times, ratio_of_medians


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
                            rounds: int = 3, peer_images: int | None = None) -> list[PeerResult]:
    """Time deletion + insertion and ROAD against their per-image peers on ``clf`` with images
    ``x`` and ``maps``; the per-image peers run on the first ``peer_images`` images and their time
    is scaled to the batch (they are per-image loops: linear in the images).

    Agreement: the per-image loop's AUCs against ours on those images (the same computation, so
    float noise only); Quantus' curves and pytorch-grad-cam's ROAD are checked in the tests
    (``tests/metrics/test_deletion.py``, ``test_road.py``: their ROAD draws its own noise), so
    those rows carry no difference here.
    """
    from salbench.metrics.road import Road

    device = x.device
    with torch.no_grad():
        t = clf(x).argmax(1)
    n = len(x)
    k = min(n, peer_images or n)
    sigma = 5.0 * x.shape[-1] / 224
    ours_causal = (Deletion(steps=steps), Insertion(steps=steps, sigma=sigma))
    road = Road(fractions=fractions)
    name = getattr(clf, "name", type(clf).__name__)
    dev_name = device_name(device)

    def result(method: str, peer: str, times: dict[str, list[float]], diff: float, tol: float, notes: str) -> PeerResult:
        scaled = [v * n / k for v in times["peer"]]
        if k < n:
            notes = f"{notes}; peer timed on {k} of {n} images, scaled x{n / k:g}"
        return PeerResult(method=method, peer=peer, model=name, batch_size=n, image_size=x.shape[-1], device=dev_name,
                          ours_ms=statistics.median(times["ours"]), peer_ms=statistics.median(scaled), ours_min_ms=min(times["ours"]),
                          peer_min_ms=min(scaled), speedup=ratio_of_medians(scaled, times["ours"]), max_abs_diff=diff, tolerance=tol,
                          rounds=rounds, notes=notes, device_type=device.type)

    def ours_causal_run():
        return [m.compute(model_context(clf, x, maps, t)) for m in ours_causal]

    def loop_run():
        return causal_per_image(clf, x[:k], maps[:k], t[:k], steps, sigma)

    got = ours_causal_run()  # the agreement check's runs are the timing's warm-up
    ours_auc = torch.stack([got[0]["deletion_auc"][:k], got[1]["insertion_auc"][:k]], 1).double().cpu().numpy()
    diff = float(np.abs(ours_auc - loop_run()).max())
    times = interleaved_times({"ours": ours_causal_run, "peer": loop_run}, device, rounds=rounds, warmup=0)
    results = [result("deletion+insertion", "per-image loop (RISE CausalMetric)", times, diff, 1e-5,
                      f"{steps} steps each; max |diff| of the AUCs")]
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
        times = interleaved_times({"ours": lambda: ours_del.compute(model_context(clf, x, maps, t)), "peer": quantus_run}, device, rounds=rounds)
        results.append(result("deletion", "quantus.PixelFlipping", times, math.nan, math.nan,
                              f"{3 * steps} steps; agreement 1e-5 in tests/metrics/test_deletion.py"))
    if importlib.util.find_spec("pytorch_grad_cam") is not None:
        from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

        targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in t[:k]]
        peers = [cls(percentile=round(100 * (1 - f))) for f in fractions for cls in (ROADMostRelevantFirst, ROADLeastRelevantFirst)]
        cams = maps[:k].cpu().numpy()

        def gradcam_road():
            return [m(x[:k], cams, targets, clf, return_diff=False) for m in peers]

        times = interleaved_times({"ours": lambda: road.compute(model_context(clf, x, maps, t)), "peer": gradcam_road}, device, rounds=rounds)
        results.append(result("road", "pytorch_grad_cam ROAD MoRF+LeRF", times, math.nan, math.nan,
                              f"fractions {', '.join(f'{f:g}' for f in fractions)}; agreement 2e-3 (noise off) in tests/metrics/test_road.py"))
    return results


def faithfulness_peer_comparison(model: str = "resnet18", batch_size: int = 8, image_size: int = 224, device: str | torch.device = "auto", *,
                                 rounds: int = 3, peer_images: int = 4, steps: int = 16, seed: int = 0) -> list[PeerResult]:
    """``faithfulness_comparison`` as ``salbench throughput --peers`` runs it: a seeded random-init
    timm classifier (cost does not depend on the weights), smooth synthetic images and the
    classifier's own Grad-CAM maps of its predicted classes."""
    dev = resolve_device(device)
    clf = load_for_throughput(model_spec(model), dev, "float32", False, False, seed)
    x, _, _, _ = synthetic_inputs(batch_size, image_size, clf.num_classes, dev, seed)
    with torch.no_grad():
        t = clf(x).argmax(1)
    method = create_method("gradcam")
    method.check(clf)
    maps = method(clf, x, t).detach()
    return faithfulness_comparison(clf, x, maps, steps=steps, rounds=rounds, peer_images=peer_images)
