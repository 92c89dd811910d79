"""The masker: a timm classifier's feature stages + a small upsample-and-concatenate decoder.

Encoder: the classifier's own stages, read generically with ``forward_intermediates`` at the
stages of ``feature_info``. Decoder: every stage projected to ``decoder_channels`` channels (1x1
conv, BN, ReLU), bilinearly upsampled to the finest stage and concatenated, a 3x3 conv to one
channel, sigmoid, bilinear upsampling to the image. Input: pixel images in [0,1]; the masker owns
the classifier's normalisation and input size, like ``salbench.classifiers.Classifier``. Works with
any timm model that has ``feature_info`` and ``forward_intermediates`` (the zoo's ResNet,
EfficientNet, ConvNeXt and ViT; ``resnet50`` for ImageNet).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from salbench.errors import UsageError


def feature_stages(model: nn.Module) -> list[dict[str, Any]]:
    """``feature_info`` of a timm model as a list of dicts (num_chs, reduction, module)."""
    info = getattr(model, "feature_info", None)
    if info is None or not hasattr(model, "forward_intermediates"):
        raise UsageError(f"{type(model).__name__}: CASM needs a timm model with feature_info and forward_intermediates")
    if hasattr(info, "get_dicts"):
        info = info.get_dicts()
    return [dict(d) for d in info]


class Masker(nn.Module):
    """Encoder (a timm classifier's feature stages) + upsample-and-concatenate decoder.

    ``forward(x)`` takes pixel images B x 3 x H x W in [0,1] and returns masks B x H x W in [0,1].
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        input_size: Sequence[int],
        decoder_channels: int = 16,
        indices: Sequence[int] | None = None,
        interpolation: str = "bilinear",
    ):
        super().__init__()
        stages = feature_stages(encoder)
        self.indices = list(range(len(stages))) if indices is None else [int(i) for i in indices]
        self.encoder = encoder
        self.proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(stages[i]["num_chs"], decoder_channels, 1, bias=False), nn.BatchNorm2d(decoder_channels), nn.ReLU(inplace=True))
            for i in self.indices
        )
        self.head = nn.Conv2d(decoder_channels * len(self.indices), 1, 3, padding=1)
        self.input_size = tuple(int(v) for v in input_size)[-2:]
        self.interpolation = interpolation
        self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([float(v) for v in std]).view(1, 3, 1, 1), persistent=False)

    def decoder_parameters(self) -> list[nn.Parameter]:
        return [*self.proj.parameters(), *self.head.parameters()]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel images -> encoder input (resized to the training input size, then standardised)."""
        if tuple(x.shape[-2:]) != self.input_size:
            mode = "bicubic" if self.interpolation == "bicubic" else "bilinear"
            x = F.interpolate(x, size=self.input_size, mode=mode, align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def stage_features(self, xn: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder.forward_intermediates(xn, indices=self.indices, intermediates_only=True)

    def decode(self, feats: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """Stage features -> masks B x 1 x H x W in [0,1] at ``size``."""
        finest = max((f.shape[-2:] for f in feats), key=lambda s: s[0] * s[1])
        ups = []
        for proj, f in zip(self.proj, feats):
            p = proj(f)
            if p.shape[-2:] != finest:
                p = F.interpolate(p, size=finest, mode="bilinear", align_corners=False)
            ups.append(p)
        m = torch.sigmoid(self.head(torch.cat(ups, 1)))
        if tuple(m.shape[-2:]) != tuple(size):
            m = F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.stage_features(self.normalize(x)), x.shape[-2:])[:, 0]


def apply_mask(x: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Masked-out images: ``(1 - m) * x + m * fill`` (pixel space; ``mask`` B x 1 x H x W)."""
    return x * (1 - mask) + fill * mask


__all__ = ["Masker", "apply_mask", "feature_stages"]
