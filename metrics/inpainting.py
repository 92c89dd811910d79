"""Inpainting backends for the "inpainted masked-out" agnosticism variant.

Every backend is ``fn(images, remove) -> images``: ``images`` B x 3 x H x W float in [0,1]
(pixel space, RGB), ``remove`` B x H x W bool (True = fill this pixel). It returns float32
B x 3 x H x W on the input's device. Inpainting a masked-out image tells whether a low
masked-out accuracy comes from removing the object or from the artificial black hole.

Shared edge-case rules (all backends):
  * kept pixels are returned exactly unchanged (backends that quantise, like OpenCV's uint8
    Telea, only contribute the removed pixels);
  * an image with nothing removed is not processed; if no image in the batch removes anything
    the input is returned as float32 without any work (possibly the same tensor);
  * an image with *every* pixel removed is filled with mid-grey 0.5: there is no known pixel
    to inpaint from, and the image mean is undefined on a masked-out image (or, taken from the
    unmasked image, would leak the removed content). 0.5 is neutral and classifier-agnostic.

Backends: ``telea`` (OpenCV, radius 3, the CASM paper's choice), ``biharmonic``
(scikit-image), both per image over a thread pool on the CPU; ``pushpull``, a batched
on-device fill (masked mean pyramid) for speed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from salbench.metrics._util import thread_map
from salbench.registry import Registry

INPAINTERS: Registry = Registry("inpainting backend")

#: Fill value for images whose every pixel is removed.
ALL_REMOVED_FILL = 0.5
#: ``cv2.inpaint`` radius (the CASM paper's choice).
TELEA_RADIUS = 3


def _check(images: torch.Tensor, remove: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be B x 3 x H x W, got {tuple(images.shape)}")
    if remove.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"remove must be B x H x W = {(images.shape[0], *images.shape[2:])}, got {tuple(remove.shape)}")


def _finish(images: torch.Tensor, remove: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
    """Keep the known pixels exactly, take the fill elsewhere; all-removed images become grey."""
    full = remove.flatten(1).all(dim=1)[:, None, None, None]
    filled = torch.where(full, torch.full_like(filled, ALL_REMOVED_FILL), filled)
    return torch.where(remove[:, None], filled, images)


def per_image_backend(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable:
    """Turn ``fn(img HxWx3 float32 [0,1], remove HxW bool) -> HxWx3`` into a batched backend.

    The batch goes to the CPU once; only images that remove some but not all pixels are
    processed, in a thread pool; the result goes back to the input's device in one copy.
    """

    def backend(images: torch.Tensor, remove: torch.Tensor) -> torch.Tensor:
        _check(images, remove)
        images = images.detach().to(torch.float32)
        remove = remove.bool()
        counts = remove.flatten(1).sum(dim=1).cpu()
        n = remove.shape[1] * remove.shape[2]
        if not bool((counts > 0).any()):
            return images
        work = [i for i, c in enumerate(counts.tolist()) if 0 < c < n]
        filled = images.clone()
        if work:
            imgs = images[work].permute(0, 2, 3, 1).contiguous().cpu().numpy()
            masks = remove[work].cpu().numpy()
            outs = thread_map(lambda a: np.asarray(fn(a[0], a[1]), dtype=np.float32), list(zip(imgs, masks)))
            sel = torch.as_tensor(work, device=images.device)
            filled[sel] = torch.from_numpy(np.stack(outs)).permute(0, 3, 1, 2).to(images.device)
        return _finish(images, remove, filled)

    backend.__doc__ = fn.__doc__
    backend.__name__ = getattr(fn, "__name__", "backend")
    return backend


def _telea_one(img: np.ndarray, remove: np.ndarray) -> np.ndarray:
    """OpenCV Telea (fast marching), radius 3, on the uint8 image, as the CASM paper did."""
    import cv2

    u8 = np.ascontiguousarray(np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8))
    out = cv2.inpaint(u8, remove.astype(np.uint8) * 255, TELEA_RADIUS, cv2.INPAINT_TELEA)
    return out.astype(np.float32) / 255.0


def _biharmonic_one(img: np.ndarray, remove: np.ndarray) -> np.ndarray:
    """scikit-image biharmonic inpainting (smooth, slower; a second opinion on Telea)."""
    from skimage.restoration import inpaint_biharmonic

    out = inpaint_biharmonic(img.astype(np.float64), remove, channel_axis=-1)
    return np.clip(out, 0.0, 1.0)


telea = INPAINTERS.register("telea")(per_image_backend(_telea_one))
biharmonic = INPAINTERS.register("biharmonic")(per_image_backend(_biharmonic_one))


@INPAINTERS.register("pushpull")
def pushpull(images: torch.Tensor, remove: torch.Tensor) -> torch.Tensor:
    """Batched on-device fill: each removed pixel takes the masked mean of the known pixels at
    the finest pyramid level where its cell has any (push-pull), smoothed by bilinear upsampling.

    No CPU round trip and O(log size) steps, so it is the backend for throughput runs.
    """
    _check(images, remove)
    images = images.detach().to(torch.float32)
    remove = remove.bool()
    if not bool(remove.any()):
        return images
    known = (~remove)[:, None].to(torch.float32)
    filled = _push_pull(images * known, known)
    return _finish(images, remove, filled.clamp(0, 1))


def _push_pull(num: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Recursive masked mean pyramid: ``num`` is weight-multiplied colour, ``w`` the weight."""
    h, wd = num.shape[-2:]
    est = num / w.clamp_min(1e-8)
    if h == 1 and wd == 1:
        return torch.where(w > 0, est, torch.full_like(est, ALL_REMOVED_FILL))
    kh, kw = min(2, h), min(2, wd)
    cnum = F.avg_pool2d(num, (kh, kw), ceil_mode=True) * (kh * kw)
    cw = F.avg_pool2d(w, (kh, kw), ceil_mode=True) * (kh * kw)
    coarse = _push_pull(cnum, cw)
    up = F.interpolate(coarse, size=(h, wd), mode="bilinear", align_corners=False)
    return torch.where(w > 0, est, up)


def inpaint(images: torch.Tensor, remove: torch.Tensor, backend: str = "telea") -> torch.Tensor:
    """Fill the ``remove`` pixels of ``images`` with the registered backend ``backend``."""
    return INPAINTERS.get(backend)(images, remove)
