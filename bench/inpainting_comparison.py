"""Speed and agreement of two inpainting backends (the on-device ``pushpull`` fill vs OpenCV Telea).

Agreement is what matters to the benchmark: the fraction of images on which eval classifiers
give the same top-1 to both inpainted versions, beside the same fraction for no inpainting at
all (a floor).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from salbench.metrics.inpainting import inpaint
from salbench.timing import interleaved_times, ratio_of_medians

@dataclass
class InpaintComparison:
    backend: str
    reference: str
    batch_size: int
    image_size: int
    removed_fraction: float
    backend_ms: float
    reference_ms: float
    speedup: float  # median over rounds of reference_ms / backend_ms
    mean_abs_diff: float  # on removed pixels, [0,1] scale
    top1_agreement: dict[str, float]  # eval classifier -> fraction of images with the same top-1
    masked_out_agreement: dict[str, float]  # same, reference vs no inpainting at all (a floor)

    def line(self) -> str:
        agree = ", ".join(f"{k}: {100 * v:.0f}% (masked-out {100 * self.masked_out_agreement[k]:.0f}%)" for k, v in self.top1_agreement.items())
        return (f"{self.backend} vs {self.reference}, {self.batch_size}x{self.image_size}px, {100 * self.removed_fraction:.0f}% removed: "
                f"{self.backend_ms:.1f} ms vs {self.reference_ms:.1f} ms (x{self.speedup:.2f}); mean |diff| on removed pixels "
                f"{self.mean_abs_diff:.3f}; top-1 agreement {agree}")


def half_masks(batch_size: int, image_size: int, seed: int = 0, device: torch.device | str = "cpu", fraction: float = 0.5) -> torch.Tensor:
    """Smooth random blob masks removing ``fraction`` of each image's pixels (B x H x W bool)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch_size, 1, 6, 6, generator=g)
    m = F.interpolate(low, size=(image_size, image_size), mode="bicubic", align_corners=False)[:, 0]
    m = m + 1e-6 * torch.rand(m.shape, generator=g)  # break ties
    k = int(round(fraction * image_size * image_size))
    thr = m.flatten(1).kthvalue(image_size * image_size - k, dim=1).values
    return (m > thr[:, None, None]).to(device)


def inpainting_comparison(images: torch.Tensor, remove: torch.Tensor, classifiers: dict[str, Any], backend: str = "pushpull",
                          reference: str = "telea", rounds: int = 5) -> InpaintComparison:
    """Speed and agreement of two inpainting backends on masked-out images."""
    dev = images.device
    masked = images * (~remove)[:, None].to(images.dtype)
    times = interleaved_times({"b": lambda: inpaint(masked, remove, backend), "r": lambda: inpaint(masked, remove, reference)}, dev, rounds=rounds, warmup=1)
    a = inpaint(masked, remove, backend)
    r = inpaint(masked, remove, reference)
    diff = float((a - r).abs().mean(1)[remove].mean()) if bool(remove.any()) else 0.0
    agree, floor = {}, {}
    with torch.no_grad():
        for name, clf in classifiers.items():
            pa_, pr, pm = clf(a).argmax(1), clf(r).argmax(1), clf(masked).argmax(1)
            agree[name] = float((pa_ == pr).float().mean())
            floor[name] = float((pm == pr).float().mean())
    return InpaintComparison(
        backend=backend, reference=reference, batch_size=images.shape[0], image_size=images.shape[-1],
        removed_fraction=float(remove.float().mean()), backend_ms=statistics.median(times["b"]), reference_ms=statistics.median(times["r"]),
        speedup=ratio_of_medians(times["r"], times["b"]), mean_abs_diff=diff, top1_agreement=agree, masked_out_agreement=floor,
    )
