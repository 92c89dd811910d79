"""Counter-based random numbers: a map depends only on its image's seed, never on the batch.

``uniform(seeds, shape)`` hashes (seed, element index) with a 32-bit integer finaliser
(lowbias32), vectorised on the device. The same seeds give the same numbers on any device,
batch size or shard, which makes stochastic methods (random control, RISE) batch-invariant.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF


def mix32(x: torch.Tensor) -> torch.Tensor:
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def derive_seeds(seeds: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """One 32-bit seed per (seed, sub-index) pair, elementwise (e.g. one per RISE mask of an image)."""
    return mix32(mix32(seeds.to(torch.int64)) ^ mix32(index.to(torch.int64) * 0x9E3779B1 + 0x2545F491))


def image_seeds(base_seed: int, index: torch.Tensor, salt: int = 0) -> torch.Tensor:
    """Per-image seeds from the run seed, a per-method salt and the dataset index of each image."""
    s = mix32(torch.as_tensor(index, dtype=torch.int64) + mix32(torch.tensor(base_seed * 0x9E3779B1 + salt, dtype=torch.int64)))
    return s


def uniform(seeds: torch.Tensor, shape: tuple[int, ...], device: torch.device | str | None = None) -> torch.Tensor:
    """B x *shape float32 uniforms in [0, 1), element ``j`` of image ``i`` = hash(seeds[i], j)."""
    device = device if device is not None else seeds.device
    n = 1
    for s in shape:
        n *= s
    counter = torch.arange(n, device=device, dtype=torch.int64)
    h = mix32(mix32(seeds.to(device, torch.int64)[:, None] * 0x632BE5AB + counter[None, :]) + 0x5BD1E995)
    return (h.to(torch.float64) / 2**32).to(torch.float32).view(len(seeds), *shape)
