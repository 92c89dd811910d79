"""Input helpers of the benchmark suite (imported as ``benchutils``: conftest modules share one name)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def smooth_images(b: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, 6, 6, generator=g)
    x = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (0.85 * x + 0.15 * torch.rand(b, 3, size, size, generator=g)).clamp(0, 1)


def smooth_maps(b: int, size: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 1, 5, 5, generator=g)
    m = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)[:, 0].clamp(0, 1)
    return m / m.flatten(1).amax(1).view(-1, 1, 1)
