"""Definition tests for ``mask_energy`` (the share of map mass on the GT pixel mask)."""

import math

import torch

from salbench.metrics.mask_energy import mask_energy


def _object(h=8, w=8):
    g = torch.zeros(1, h, w)
    g[0, 2:6, 1:5] = 1  # 16 of 64 pixels
    return g


def test_map_on_the_object_scores_one_constant_map_scores_the_object_share(device):
    g = _object().to(device)
    assert mask_energy(g.clone(), g).item() == 1.0
    assert math.isclose(mask_energy(torch.full_like(g, 0.3), g).item(), 16 / 64, rel_tol=1e-6)
    assert mask_energy(1 - g, g).item() == 0.0


def test_partial_mass_and_batch_independence(device):
    g = _object().to(device)
    m = torch.zeros_like(g)
    m[0, 2, 1] = 1.0  # inside
    m[0, 0, 0] = 3.0 / 4  # outside (unnormalised mass is fine: it is a ratio)
    single = mask_energy(m, g)
    assert math.isclose(single.item(), 1 / 1.75, rel_tol=1e-6)
    batch = mask_energy(torch.cat([m, g, torch.zeros_like(g)]), torch.cat([g, g, g]))
    assert batch[0].item() == single.item() and batch[1].item() == 1.0 and math.isnan(batch[2].item())
