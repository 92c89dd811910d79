"""Decoding images whose pixels are wider than 8 bits (16-bit PNG/TIFF, 32-bit int or float).

PIL's ``convert("RGB")`` clips such pixels at 255 instead of scaling them: a 16-bit grayscale
PNG (mode ``I;16``) came out 98.7% white. Here they are scaled by the range of their storage
type into [0, 1] and kept as float (mode ``F``), so resizing loses no precision:

* ``I;16``, ``I;16L``, ``I;16B``, ``I;16N`` (unsigned 16-bit): / 65535;
* ``I`` (signed 32-bit; PIL also opens some 16-bit files this way): / 65535 when every value
  lies in [0, 65535], else / (2**31 - 1), negatives clipped to 0;
* ``F`` (32-bit float): as is when the values lie in [0, 1], else / 255 when they lie in
  [0, 255], else / 65535, clipped to [0, 1].

These modes are single-channel; the image is grey (the same plane in R, G and B).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def unit_range_plane(im: Image.Image) -> Image.Image | None:
    """A mode-``F`` image in [0, 1] for a high-bit-depth image, None for the 8-bit modes."""
    if im.mode not in HIGH_BIT_MODES:
        return None
    a = np.asarray(im).astype(np.float64)
    if im.mode.startswith("I;16"):
        scale = 65535.0
    elif im.mode == "I":
        scale = 65535.0 if a.size == 0 or (a.min() >= 0 and a.max() <= 65535) else float(2**31 - 1)
    else:
        top = float(np.nanmax(a)) if a.size else 0.0
        scale = 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else 65535.0
    unit = np.clip(np.nan_to_num(a / scale), 0.0, 1.0).astype(np.float32)
    return Image.fromarray(unit, mode="F")
