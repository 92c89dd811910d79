"""A stand-in for a dataset that is not on this machine, so that ``salbench plan --images N`` can
price a study before anything is downloaded.

The plan needs a dataset's image count, image size and whether it has pixel masks (PxAP runs
only where it does); what the images show does not change the cost of any classifier pass. The
stand-in takes the size (and any ``limit``) from the spec exactly as the real format would parse
them, and renders synthetic images of that size for the calibration passes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from salbench.datasets import parse_spec
from salbench.datasets.base import SaliencyDataset, Sample
from salbench.errors import UsageError

#: classes of the formats that know them (labels only need to be valid class indices)
_FORMAT_CLASSES = {"imagenet": 1000}


class PlannedDataset(SaliencyDataset):
    """``n`` images at the size the dataset spec names; see the module docstring."""

    kind = "planned"

    def __init__(self, spec: str, n: int):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UsageError(f"--images={n!r}: expected a positive image count")
        name, _arg, params = parse_spec(spec)
        params = dict(params)
        if name == "synthetic":
            from salbench.datasets import build_dataset

            real = build_dataset(spec)  # rendered on demand: opening it reads nothing
            size, has_masks, limit = int(real.image_size[0]), True, None
            self.num_classes = real.num_classes
            content = real.cfg  # its own images (classes, variant), any count
        else:
            from salbench.datasets.boxed import CommonOptions

            options = CommonOptions.pop_from(name, params)
            size, has_masks, limit = options.size, "masks" in params, options.limit
            self.num_classes = _FORMAT_CLASSES.get(name, 1000)
            from salbench.datasets.synthetic import SyntheticConfig

            content = SyntheticConfig(size=max(size, 16))  # the renderer's smallest image is 16 px
        self.n = n if limit is None else min(n, limit)
        self.image_size = (size, size)
        self.has_masks = has_masks
        self.spec = spec
        self.class_names = [str(k) for k in range(self.num_classes)]
        self.skipped = {}
        self._content = content

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        from salbench.datasets.synthetic import render

        if not 0 <= i < self.n:
            raise IndexError(i)
        img, label, boxes, mask = render(self._content, "val", i)
        image, gt_mask = torch.from_numpy(img).permute(2, 0, 1).contiguous(), torch.from_numpy(mask)
        if self._content.size != self.image_size[0]:  # a crop below 16 px: the smallest rendering, resized
            image = F.interpolate(image[None], size=self.image_size, mode="bilinear", align_corners=False)[0]
            gt_mask = F.interpolate(gt_mask[None, None].float(), size=self.image_size, mode="nearest")[0, 0] > 0
            boxes = boxes * (self.image_size[0] / self._content.size)
        return Sample(index=i, id=f"planned-{i:06d}", image=image, label=label % self.num_classes, boxes=torch.as_tensor(boxes),
                      gt_mask=gt_mask if self.has_masks else None, unclipped_boxes=torch.as_tensor(boxes).clone())

    def protocol(self) -> dict:
        return {**super().protocol(), "planned_images": self.n}
