"""Control rows: maps that ignore the classifier, the floor every real method must beat."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from salbench.methods.base import Capabilities, SaliencyMethod, register_method
from salbench.rng import uniform

_CONTROL = Capabilities(classifier_dependent=False, family="control")


@register_method("centre")
class CentreBox(SaliencyMethod):
    """A centred box covering ``area`` of the image (a centre-bias prior)."""

    capabilities = _CONTROL
    normalization = "none"
    description = "control: centred box covering half the image"

    @dataclass(frozen=True)
    class Params:
        area: float = 0.5

        def __post_init__(self):
            if not 0 < self.area <= 1:
                raise ValueError(f"area={self.area}: expected 0 < area <= 1")

    def cost(self):
        return (0.0, 0.0)

    def attribute(self, classifier, images, targets, seeds):
        b, _, h, w = images.shape
        side = self.params.area**0.5
        ys = (torch.arange(h, device=images.device) + 0.5) / h
        xs = (torch.arange(w, device=images.device) + 0.5) / w
        inside_y = (ys - 0.5).abs() <= side / 2
        inside_x = (xs - 0.5).abs() <= side / 2
        box = (inside_y[:, None] & inside_x[None, :]).float()
        return box.expand(b, h, w).clone()


@register_method("full")
class FullImage(SaliencyMethod):
    """Everything is salient: the masked-out image is empty."""

    capabilities = _CONTROL
    normalization = "none"
    description = "control: the whole image"

    def cost(self):
        return (0.0, 0.0)

    def attribute(self, classifier, images, targets, seeds):
        b, _, h, w = images.shape
        return images.new_ones(b, h, w)


@register_method("random")
class RandomMap(SaliencyMethod):
    """Smooth random noise: uniform values on a ``grid`` x ``grid`` lattice, upsampled bilinearly.

    Seeded per image (run seed and dataset index), so the same image always gets the same map.
    """

    capabilities = Capabilities(classifier_dependent=False, stochastic=True, family="control")
    normalization = "none"
    description = "control: smooth per-image random map"

    @dataclass(frozen=True)
    class Params:
        grid: int = 8

        def __post_init__(self):
            if self.grid < 1:
                raise ValueError(f"grid={self.grid}: expected a positive lattice size")

    def cost(self):
        return (0.0, 0.0)

    def attribute(self, classifier, images, targets, seeds):
        g = self.params.grid
        low = uniform(seeds, (g, g), device=images.device)
        return F.interpolate(low[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
