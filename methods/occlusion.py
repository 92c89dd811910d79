"""Occlusion sensitivity (Zeiler & Fergus 2014).

A ``window`` x ``window`` patch of constant ``fill`` (pixel space, default 0.5 grey; pixels are in
[0,1]) slides over the image with ``stride``; the last row/column of positions is snapped to the
image border so every pixel is covered. For every position k the score drop

    d_k = s_c(x) - s_c(x with patch k occluded)

is recorded, with s_c the target-class *probability* (softmax; ``score="prob"``, the quantity
Zeiler & Fergus plot) or the unnormalised class score (``score="logit"``). The raw map of a pixel is
the mean of d_k over the patches that cover it, clamped at 0 (occluding it made the class less
likely); the caller divides by the per-image maximum.

Batched over patch positions: the clean image and its occluded copies of all images in the batch
form one list of (image, position) copies, run through the classifier ``chunk`` copies at a time
(``chunk`` bounds memory: chunk x 3 x H x W floats). Cost: positions + 1 forward passes per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from salbench.errors import UsageError
from salbench.methods.base import Capabilities, SaliencyMethod, register_method, target_scores


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of a window sliding over ``size`` pixels, the last one flush with the border."""
    window = min(window, size)
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def occlusion_masks(h: int, w: int, window: int, stride: int, device=None) -> torch.Tensor:
    """P x h x w boolean masks, True inside each patch position (row-major over positions)."""
    ys, xs = window_starts(h, window, stride), window_starts(w, window, stride)
    wy, wx = min(window, h), min(window, w)
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    y0 = torch.tensor(ys, device=device)
    x0 = torch.tensor(xs, device=device)
    in_y = (rows[None, :] >= y0[:, None]) & (rows[None, :] < y0[:, None] + wy)  # Py x h
    in_x = (cols[None, :] >= x0[:, None]) & (cols[None, :] < x0[:, None] + wx)  # Px x w
    return (in_y[:, None, :, None] & in_x[None, :, None, :]).reshape(len(ys) * len(xs), h, w)


def class_score(logits: torch.Tensor, targets: torch.Tensor, score: str) -> torch.Tensor:
    if score == "prob":
        return logits.float().softmax(1).gather(1, targets.view(-1, 1)).squeeze(1)
    return target_scores(logits.float(), targets)


@register_method("occlusion")
class Occlusion(SaliencyMethod):
    capabilities = Capabilities(needs_gradients=False, classifier_dependent=True, family="perturb")
    description = "occlusion: drop of the class probability when a grey patch covers each pixel"

    @dataclass(frozen=True)
    class Params:
        window: int = 16
        stride: int = 16  # generic defaults; per-dataset ones: defaults_for
        fill: float = 0.5
        score: str = "prob"
        chunk: int = 256

        def __post_init__(self):
            if self.window < 1:
                raise ValueError(f"window={self.window}: expected a positive patch size in pixels")
            if self.stride < 1:
                raise ValueError(f"stride={self.stride}: expected a positive step in pixels")
            if not 0.0 <= float(self.fill) <= 1.0:
                raise ValueError(f"fill={self.fill}: expected a pixel value in [0, 1]")
            if self.score not in ("prob", "logit"):
                raise ValueError(f"score={self.score!r}: expected 'prob' or 'logit'")
            if self.chunk < 1:
                raise ValueError(f"chunk={self.chunk}: expected a positive number of images per forward pass")

    @classmethod
    def defaults_for(cls, image_size):
        """Per-dataset defaults. Up to 96 px (the 64x64 synthetic set): window 24, stride 8, the
        logit score (6 x 6 = 36 positions). The zoo classifiers are ~99% confident, so one 16 px
        grey patch rarely moves the *probability*: with window 16 / stride 16 / prob only one or two
        patches registered and the boxes were a third of the object's (LE 75-80%); window 24 /
        stride 8 / logit gave 44-56% (256 val images). Beyond 96 px about 1/7 of the side, half
        overlapping (224x224 ImageNet: window 32, stride 16, 13 x 13 = 169 positions)."""
        side = min(image_size)
        if side <= 96:
            return {"window": 24, "stride": 8, "score": "logit"}
        window = max(8, round(side / 7))
        return {"window": window, "stride": max(1, window // 2)}

    def check_image_size(self, image_size):
        """A window larger than the image (or one position covering all of it) gives a flat map."""
        h, w = image_size
        if self.params.window > min(h, w) or self.positions((h, w)) == 1:
            raise UsageError(f"method 'occlusion': window={self.params.window} does not fit the {h}x{w} images; expected a window smaller than {min(h, w)} px")

    def positions(self, image_size: tuple[int, int]) -> int:
        h, w = image_size
        p = self.params
        return len(window_starts(h, p.window, p.stride)) * len(window_starts(w, p.window, p.stride))

    def cost(self, image_size: tuple[int, int] = (64, 64)):
        """positions + 1 forward passes per image (depends on the image size; 64x64 by default)."""
        return (float(self.positions(image_size) + 1), 0.0)

    @torch.no_grad()
    def attribute(self, classifier, images, targets, seeds):
        p = self.params
        b, _, h, w = images.shape
        masks = occlusion_masks(h, w, p.window, p.stride, device=images.device)
        n_pos = len(masks)
        # copy k of image i: k = 0 is the clean image, k >= 1 has patch k-1 occluded
        copy_masks = torch.cat([masks.new_zeros(1, h, w), masks])
        fill = torch.tensor(float(p.fill), dtype=images.dtype, device=images.device)
        scores = images.new_empty(b * (n_pos + 1), dtype=torch.float32)
        for start in range(0, len(scores), p.chunk):
            idx = torch.arange(start, min(start + p.chunk, len(scores)), device=images.device)
            img, k = idx // (n_pos + 1), idx % (n_pos + 1)
            copies = torch.where(copy_masks[k][:, None], fill, images[img])
            scores[idx] = class_score(classifier(copies), targets[img], p.score)
        scores = scores.view(b, n_pos + 1)
        drops = scores[:, :1] - scores[:, 1:]  # B x P
        fmasks = masks.float()
        total = torch.einsum("bp,phw->bhw", drops, fmasks)
        return (total / fmasks.sum(0).clamp_min(1)).clamp_min(0)
