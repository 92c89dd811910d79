"""What every dataset yields: samples in [0,1] pixel space with boxes, collated into a ``Batch``.

Box convention (everywhere in salbench): ``(x0, y0, x1, y1)`` in pixel-edge coordinates of the
image as the dataset yields it; a box covers the integer pixels ``x0 <= x < x1, y0 <= y < y1``,
so its area in pixels is ``(x1 - x0) * (y1 - y0)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch


@dataclass
class Sample:
    """One image. ``image`` is float32 3xHxW in [0,1]; ``boxes`` is (n, 4) float32.

    ``unclipped_boxes`` (optional, (m, 4) float32): the ground-truth boxes mapped to the image as
    the official CASM code maps them, *before* any clipping to the crop and without dropping boxes
    that fall outside it, truncated toward zero like its ``int()`` (file-backed datasets; the
    synthetic set's boxes, which are never clipped). Only the ``casm`` metric reads them; every
    other metric uses ``boxes``. None where the dataset cannot know them.
    """

    index: int
    id: str
    image: torch.Tensor
    label: int
    boxes: torch.Tensor
    gt_mask: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    unclipped_boxes: torch.Tensor | None = None


@dataclass
class Batch:
    """A collated batch, ready to move to the device.

    ``boxes`` is padded to the largest box count in the batch: B x K x 4, with ``box_valid``
    (B x K bool) marking the real ones. ``unclipped_boxes`` / ``unclipped_valid`` (B x K' x 4 and
    B x K', padded the same way) are the samples' ``unclipped_boxes`` when every sample has them,
    else None.
    """

    index: torch.Tensor
    ids: list[str]
    images: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    box_valid: torch.Tensor
    gt_masks: torch.Tensor | None = None
    errors: list[str | None] | None = None  # per image: why it could not be loaded (an error row)
    unclipped_boxes: torch.Tensor | None = None
    unclipped_valid: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str) -> "Batch":
        return replace(
            self,
            index=self.index.to(device),
            images=self.images.to(device, non_blocking=True),
            labels=self.labels.to(device),
            boxes=self.boxes.to(device),
            box_valid=self.box_valid.to(device),
            gt_masks=None if self.gt_masks is None else self.gt_masks.to(device),
            unclipped_boxes=None if self.unclipped_boxes is None else self.unclipped_boxes.to(device),
            unclipped_valid=None if self.unclipped_valid is None else self.unclipped_valid.to(device),
        )

    def select(self, keep: torch.Tensor | list[int]) -> "Batch":
        """The sub-batch at positions ``keep`` (used when some rows are already done)."""
        idx = torch.as_tensor(keep, dtype=torch.long)
        return Batch(
            index=self.index[idx.to(self.index.device)],
            ids=[self.ids[i] for i in idx.tolist()],
            images=self.images[idx.to(self.images.device)],
            labels=self.labels[idx.to(self.labels.device)],
            boxes=self.boxes[idx.to(self.boxes.device)],
            box_valid=self.box_valid[idx.to(self.box_valid.device)],
            gt_masks=None if self.gt_masks is None else self.gt_masks[idx.to(self.gt_masks.device)],
            errors=None if self.errors is None else [self.errors[i] for i in idx.tolist()],
            unclipped_boxes=None if self.unclipped_boxes is None else self.unclipped_boxes[idx.to(self.unclipped_boxes.device)],
            unclipped_valid=None if self.unclipped_valid is None else self.unclipped_valid[idx.to(self.unclipped_valid.device)],
        )


def pad_boxes(lists: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (n_i, 4) box lists -> (B x K x 4 float32 zero-padded, B x K bool validity), K >= 1."""
    k = max(1, max(int(b.shape[0]) for b in lists))
    boxes = torch.zeros(len(lists), k, 4, dtype=torch.float32)
    valid = torch.zeros(len(lists), k, dtype=torch.bool)
    for i, b in enumerate(lists):
        n = int(b.shape[0])
        boxes[i, :n] = b
        valid[i, :n] = True
    return boxes, valid


def collate(samples: list[Sample]) -> Batch:
    """Stack samples; pad box lists. All images in a batch must share one size."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    boxes, valid = pad_boxes([s.boxes for s in samples])
    unclipped = unclipped_valid = None
    if all(s.unclipped_boxes is not None for s in samples):
        unclipped, unclipped_valid = pad_boxes([s.unclipped_boxes for s in samples])  # type: ignore[misc]
    masks = None
    if all(s.gt_mask is not None for s in samples):
        masks = torch.stack([s.gt_mask for s in samples])  # type: ignore[misc]
    return Batch(
        index=torch.tensor([s.index for s in samples], dtype=torch.long),
        ids=[s.id for s in samples],
        images=torch.stack([s.image for s in samples]),
        labels=torch.tensor([s.label for s in samples], dtype=torch.long),
        boxes=boxes,
        box_valid=valid,
        gt_masks=masks,
        errors=[s.meta.get("error") for s in samples] if any(s.meta.get("error") for s in samples) else None,
        unclipped_boxes=unclipped,
        unclipped_valid=unclipped_valid,
    )


class SaliencyDataset(torch.utils.data.Dataset):
    """Base class: a map-style dataset of ``Sample`` with a canonical spec string.

    Subclasses set ``spec`` (the string that recreates them), ``num_classes``, ``class_names``,
    ``image_size`` (H, W) and implement ``__len__`` / ``__getitem__``. ``protocol()`` lists what
    makes two runs' numbers comparable (reports never average across protocols).
    """

    spec: str
    num_classes: int
    class_names: list[str]
    image_size: tuple[int, int]
    skipped: dict[str, int]

    def protocol(self) -> dict[str, Any]:
        return {"dataset": self.spec, "image_size": list(self.image_size), "num_classes": self.num_classes}

    def describe(self) -> dict[str, Any]:
        """What ``run.json`` records about the dataset (spec, size, skips)."""
        return {**self.protocol(), "num_images": len(self), "skipped": dict(getattr(self, "skipped", {}))}
