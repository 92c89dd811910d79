"""Training data for CASM maskers: where the batches of Algorithm 1 come from.

Two sources, chosen by the ``dataset`` of a ``CasmSpec``:

* a synthetic spec (``synthetic``, ``synthetic?variant=twin``, ...): the first ``train_images``
  images of its ``train`` split, rendered once and held in memory (shared with the zoo's cached
  renders); validation statistics on its ``val`` split. Removed pixels: the training set's mean
  colour.
* ``imagenet-train:<dir>``: an ILSVRC2012-style training folder, one subfolder per synset
  (``<dir>/n01440764/*.JPEG``), labels in timm's ImageNet-1k order (sorted wnids, as for the
  validation set). Images are decoded and augmented as they are needed (random-resized crop to
  the classifier's input size, scale 0.08-1, aspect 3/4-4/3, horizontal flip: the standard
  ImageNet training augmentation) in ``workers`` DataLoader processes, so the GPU is fed while it
  trains. ``train_images`` caps the images used (a seeded subset; 0 = all). Removed pixels: the
  classifier's normalisation mean, which for ImageNet classifiers is the ImageNet mean colour.
  No validation statistics (the validation set with boxes is what ``salbench run`` evaluates).

Both are deterministic and stateless per step: the batch of step ``s`` (its images and, for the
folder, its crops and flips) depends only on ``(seed, s)``, so a run resumed from a checkpoint
sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from salbench.datasets import build_dataset
from salbench.datasets.imagenet import imagenet_synsets, synset_index
from salbench.datasets.synthetic import SyntheticConfig, SyntheticDataset
from salbench.errors import UsageError
from salbench.zoo import split_arrays

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
FOLDER_SCHEME = "imagenet-train"


def to_pixels(x_u8: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float32 N x 3 x H x W in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(x_u8)).permute(0, 3, 1, 2).float().div_(255.0)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, 7, epoch]).permutation(n)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Indices of the batch of ``step``: one seeded permutation per epoch (stateless)."""
    per_epoch = max(1, n // batch_size)
    epoch, j = divmod(step, per_epoch)
    perm = _epoch_permutation(n, seed, epoch)
    return np.sort(perm[j * batch_size : (j + 1) * batch_size])


@dataclass
class SyntheticTrainData:
    """In-memory synthetic training images (uint8 N x H x W x 3) and labels."""

    images: np.ndarray
    labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    meta: dict[str, Any]
    fill: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.fill = (self.images.reshape(-1, 3).mean(0, dtype=np.float64) / 255.0).astype(np.float32)

    @property
    def n(self) -> int:
        return len(self.images)

    def batches(self, start: int, end: int, batch_size: int, seed: int, workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step in range(start, end):
            idx = batch_indices(self.n, batch_size, step, seed)
            yield to_pixels(self.images[idx]), torch.from_numpy(self.labels[idx])

    def validation(self) -> tuple[np.ndarray, np.ndarray] | None:
        return self.val_images, self.val_labels


def random_resized_crop(width: int, height: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a random crop, the algorithm of torchvision's ``RandomResizedCrop``
    (10 tries at a random area share and log-uniform aspect, then a centre crop of clamped aspect),
    driven by ``rng`` so that a crop depends only on its seed."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


class ImageFolderTrainData:
    """An ImageNet-style training folder (synset subfolders), decoded and augmented on demand."""

    def __init__(self, root: str | os.PathLike, size: int, fill: Sequence[float], *, train_images: int = 0, classes: Sequence[int] | None = None,
                 seed: int = 0):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise UsageError(f"{FOLDER_SCHEME}:{root}: not a directory (expected a training folder with one subfolder per synset)")
        index = synset_index()
        dirs = sorted(d for d in self.root.iterdir() if d.is_dir())
        unknown = [d.name for d in dirs if d.name not in index]
        if unknown:
            raise UsageError(f"{FOLDER_SCHEME}:{root}: subfolder(s) {unknown[:5]} are not ILSVRC2012 synsets (expected e.g. 'n01440764')")
        files: list[tuple[str, int]] = []
        for d in dirs:
            label = index[d.name]
            if classes is not None and label not in classes:
                continue
            files += [(str(p), label) for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise UsageError(f"{FOLDER_SCHEME}:{root}: no images found (expected <synset>/<name>.JPEG files)")
        if train_images and train_images < len(files):  # a seeded subset, in file order
            keep = np.sort(np.random.default_rng([seed, 13]).choice(len(files), train_images, replace=False))
            files = [files[i] for i in keep]
        self.paths = [p for p, _ in files]
        self.labels = np.asarray([lab for _, lab in files], dtype=np.int64)
        self.size = int(size)
        self.fill = np.asarray(fill, dtype=np.float32)
        self.meta = {"dataset": f"{FOLDER_SCHEME}:{self.root}", "images": len(self.paths), "classes": int(len(np.unique(self.labels))),
                     "synsets": len(imagenet_synsets()), "augmentation": "random-resized-crop(0.08-1, 3/4-4/3) + hflip", "size": self.size}

    @property
    def n(self) -> int:
        return len(self.paths)

    def load(self, i: int, rng: np.random.Generator) -> np.ndarray:
        """Image ``i`` cropped, flipped and resized to size x size, uint8 H x W x 3."""
        try:
            with Image.open(self.paths[i]) as im:
                im = im.convert("RGB")
                left, top, w, h = random_resized_crop(im.width, im.height, rng)
                im = im.resize((self.size, self.size), Image.BILINEAR, box=(left, top, left + w, top + h))
                if rng.random() < 0.5:
                    im = im.transpose(Image.FLIP_LEFT_RIGHT)
                return np.asarray(im, dtype=np.uint8)
        except OSError as exc:
            raise RuntimeError(f"cannot read training image {self.paths[i]}: {exc}") from exc

    def batch(self, step: int, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = batch_indices(self.n, batch_size, step, seed)
        imgs = np.stack([self.load(int(i), np.random.default_rng([seed, 11, step, int(i)])) for i in idx])
        return to_pixels(imgs), torch.from_numpy(self.labels[idx])

    def batches(self, start: int, end: int, batch_size: int, seed: int, workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of steps ``start..end-1`` in order; ``workers`` processes decode ahead."""
        steps = _Steps(self, start, end, batch_size, seed)
        if workers <= 0:
            yield from (steps[k] for k in range(len(steps)))
            return
        loader = torch.utils.data.DataLoader(steps, batch_size=None, shuffle=False, num_workers=workers, prefetch_factor=2,
                                             persistent_workers=False, pin_memory=torch.cuda.is_available())
        yield from loader

    def validation(self) -> None:
        return None


class _Steps(torch.utils.data.Dataset):
    """Step k of a range as a map-style dataset item: one whole batch per item."""

    def __init__(self, data: ImageFolderTrainData, start: int, end: int, batch_size: int, seed: int):
        self.data, self.start, self.end, self.batch_size, self.seed = data, start, end, batch_size, seed

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.batch(self.start + k, self.batch_size, self.seed)


def is_folder_spec(dataset: str) -> bool:
    return dataset.startswith(FOLDER_SCHEME + ":")


def training_data(spec, init, progress: bool = False):
    """The training data of a ``CasmSpec`` for the classifier ``init`` (a ``ClassifierInit``)."""
    if is_folder_spec(spec.dataset):
        root = spec.dataset[len(FOLDER_SCHEME) + 1 :].split("?", 1)[0]
        if not root:
            raise UsageError(f"dataset {spec.dataset!r}: expected {FOLDER_SCHEME}:<training folder>")
        return ImageFolderTrainData(root, init.input_size[-1], init.mean, train_images=spec.train_images, classes=spec.train_classes, seed=spec.seed)
    return _synthetic_data(spec, progress)


def synthetic_config(dataset: str) -> SyntheticConfig:
    """The ``SyntheticConfig`` of a synthetic dataset spec (training reads its ``train`` split)."""
    ds = build_dataset(dataset)
    if not isinstance(ds, SyntheticDataset):
        raise UsageError(f"casm training data {dataset!r}: expected a synthetic spec or {FOLDER_SCHEME}:<ImageNet train folder>")
    return ds.cfg


def _synthetic_data(spec, progress: bool) -> SyntheticTrainData:
    """The first ``train_images`` of the synthetic train split (shared with the zoo's cached
    renders), restricted to ``train_classes`` by filtering the labels (no re-render)."""
    cfg = synthetic_config(spec.dataset)
    if spec.train_images < spec.batch_size:
        raise UsageError(f"casm {spec.name!r}: train_images={spec.train_images} on synthetic data, expected at least batch_size={spec.batch_size}")
    images, labels = split_arrays(cfg, "train", spec.train_images, progress=progress)
    if spec.train_classes is not None:
        bad = [c for c in spec.train_classes if not 0 <= c < cfg.num_classes]
        if bad:
            raise UsageError(f"train_classes {list(spec.train_classes)}: {bad} not in 0..{cfg.num_classes - 1}")
        keep = np.isin(labels, np.asarray(spec.train_classes))
        images, labels = images[keep], labels[keep]
        if len(images) < spec.batch_size:
            raise UsageError(f"train_classes {list(spec.train_classes)} leave {len(images)} images, fewer than batch_size={spec.batch_size}")
    val_images, val_labels = split_arrays(cfg, "val", spec.val_images, progress=progress)
    meta = {"dataset": spec.dataset, "synthetic_key": cfg.key(), "train_classes": list(spec.train_classes) if spec.train_classes else None}
    return SyntheticTrainData(images, labels, val_images, val_labels, meta)
