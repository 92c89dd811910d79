"""Extremal perturbation pinned to its definition: the blur pyramid and its interpolation, the sorted
area constraint, and the preserve game on a classifier that reads only the object."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from salbench.classifiers import Classifier, Preprocess
from salbench.datasets.synthetic import SyntheticDataset, class_parts
from salbench.errors import UsageError
from salbench.methods import create_method
from salbench.methods.extremal import SmoothMask, area_penalty, blur_pyramid, perturb
from salbench.rng import image_seeds
from testutils import make_classifier


class ObjectOnly(nn.Module):
    """Class 0's logit is the texture energy (|x - 3x3 mean|) averaged over each image's exact object
    mask, the other logits are 0: a classifier that reads the object and nothing else. It holds the
    masks of a fixed batch, so it must be called on that batch in order (one area per image)."""

    def __init__(self, masks: torch.Tensor, num_classes: int = 10, gain: float = 20.0):
        super().__init__()
        self.register_buffer("masks", masks.float())
        self.num_classes, self.gain = num_classes, gain

    def forward(self, x):
        assert len(x) == len(self.masks)
        detail = (x - F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)).abs().sum(1)
        energy = (detail * self.masks).sum((1, 2)) / self.masks.sum((1, 2))
        return torch.cat([self.gain * energy[:, None], energy.new_zeros(len(x), self.num_classes - 1)], 1)


def test_preserving_the_mask_keeps_the_score_of_an_object_only_classifier(one_thread):
    """Synthetic images with textured objects smaller than the target area: the final mask meets its
    area (within 0.05 of the image), covers the object (>= 90% of its pixels) and, with everything
    else blurred, keeps >= 80% of the class score, which blurring the whole image destroys."""
    ds = SyntheticDataset(split="val", n=40)
    samples = [s for s in (ds[i] for i in range(40)) if class_parts(s.label)[1] != "solid" and s.gt_mask.float().mean() < 0.15][:3]
    x = torch.stack([s.image for s in samples])
    gt = torch.stack([s.gt_mask for s in samples]).float()
    clf = Classifier(ObjectOnly(gt), "object-only", Preprocess(mean=(0, 0, 0), std=(1, 1, 1), input_size=(3, 64, 64)), 10)
    t = torch.zeros(len(x), dtype=torch.long)
    method = create_method("extremal")
    assert method.params.areas == (0.2,)
    m = method(clf, x, t)
    area = m.mean((1, 2))
    assert ((area - 0.2).abs() <= 0.05).all(), area
    assert ((m * gt).sum((1, 2)) / gt.sum((1, 2)) >= 0.9).all()
    pyramid = blur_pyramid(x, method.params.levels, method.params.max_blur)
    with torch.no_grad():
        clean, kept, blurred = (clf(v)[:, 0] for v in (x, perturb(pyramid, m), pyramid[:, 0]))
    assert (kept >= 0.8 * clean).all(), (kept, clean)
    assert (blurred <= 0.1 * clean).all()


def test_pyramid_levels_and_interpolation():
    x = torch.rand(2, 3, 16, 16)
    pyr = blur_pyramid(x, 4, 3.0)
    assert pyr.shape == (2, 4, 3, 16, 16)
    assert torch.equal(pyr[:, -1], x), "the last level is the image itself"
    assert pyr[:, 0].std() < pyr[:, 2].std() < x.std(), "blur decreases with the level"
    ones, zeros = torch.ones(2, 16, 16), torch.zeros(2, 16, 16)
    assert torch.allclose(perturb(pyr, ones), x)
    assert torch.allclose(perturb(pyr, zeros), pyr[:, 0])
    half = perturb(pyr, torch.full((2, 16, 16), 0.5))  # level 1.5: halfway between levels 1 and 2
    assert torch.allclose(half, (pyr[:, 1] + pyr[:, 2]) / 2, atol=1e-6)


def test_area_penalty_ranks_values_not_places():
    """The reference vector is sorted, so any mask with a N ones and the rest zeros costs nothing."""
    m = torch.zeros(2, 4, 4)
    m[0, 0, :2] = 1  # 2 of 16 pixels
    m[1, 3, 2:] = 1  # the same area elsewhere
    assert torch.equal(area_penalty(m, torch.tensor([2 / 16, 2 / 16])), torch.zeros(2))
    assert area_penalty(m, torch.tensor([0.5, 0.5]))[0].item() == pytest.approx(6 / 16)


def test_smooth_mask_is_a_soft_disc_around_an_active_grid_point():
    gen = SmoothMask((32, 32), 4, 8.0)
    p = torch.zeros(1, *gen.grid)
    p[0, 4, 4] = 1  # grid point centred at pixel 17.5
    m = gen(p)[0]
    assert m[16:20, 16:20].min() > 0.99 and m[0, 0] < 0.01 and m.max() <= 1
    window = m[12:24, 12:24]  # centred on 17.5: the disc is symmetric about the grid point
    assert torch.allclose(window, window.flip(0), atol=1e-5) and torch.allclose(window, window.flip(1), atol=1e-5)
    assert torch.equal(gen(torch.zeros(1, *gen.grid)), torch.zeros(1, 32, 32))


def test_jitter_is_seeded_per_image(one_thread):
    clf = make_classifier("test_resnet")
    x, t = torch.rand(3, 3, 32, 32), torch.tensor([1, 2, 3])
    method = create_method("extremal", steps=4, jitter=True)
    seeds = image_seeds(0, torch.arange(3))
    full = method(clf, x, t, seeds)
    alone = method(clf, x[1:2], t[1:2], seeds[1:2])
    assert (full[1] - alone[0]).abs().max() <= 1e-5
    other = method(clf, x[1:2], t[1:2], seeds[2:3])
    assert not torch.equal(alone, other), "a different seed flips different steps"


@pytest.mark.parametrize("params, key", [({"areas": (0.0,)}, "areas"), ({"areas": (0.5, 1.2)}, "areas"), ({"steps": 0}, "steps"), ({"sigma": -1.0}, "sigma")])
def test_bad_parameters_name_the_key(params, key):
    with pytest.raises(UsageError, match=key):
        create_method("extremal", **params)


def test_defaults_per_image_size():
    method = create_method("extremal")
    assert method.defaults_for((64, 64)) == {}
    assert method.defaults_for((224, 224))["steps"] == 800
    with pytest.raises(UsageError, match="step=4"):
        method.check_image_size((4, 4))
