"""Example images of a run, stored so that the qualitative figure is drawn, never recomputed.

``salbench run`` picks a few images with a seeded RNG from the run's image indices (fixed by the
spec seed, the choice the report made when it recomputed maps) and the batch that holds them
writes two small tables beside the others, as part files tied to the batch's completion marker
(so a resumed run ends with the same files):

* ``example_images``: image_index, image_id, label, class_name, height, width, ``image`` (uint8
  H x W x 3 bytes), ``boxes`` (the valid ground-truth boxes);
* ``example_maps``: image_index, method, source_model (null for a classifier-independent method:
  its maps are the same for every source), height, width, ``map`` (uint8 H x W,
  round(255 m)), ``mask`` (the binary mask b, bit-packed H x W), ``fill`` (uint8 H x W x 3: the
  pixels the inpainting backend put into the removed region b, zero elsewhere).

masked-in (b·x) and masked-out ((1−b)·x) follow from the image and the mask, and so does the
inpainted image the eval classifiers saw: every backend keeps the pixels outside b
(``metrics.inpainting``), so it is ``fill`` inside b and the image elsewhere. Storing only the
fill keeps the tables small (a few hundred KB for the default run). Everything is
plain Parquet (no pickled objects); ``decode_*`` turn a row back into numpy arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from salbench.results import read_table  # the tables' schemas live there, with the others

#: Images per run that get stored examples (the report's ``--qualitative-images`` at most).
EXAMPLE_COUNT = 3


def choose(num_images: int, seed: int, count: int = EXAMPLE_COUNT) -> list[int]:
    """The example image indices of a run over images ``0..num_images-1`` (sorted)."""
    if num_images <= 0 or count <= 0:
        return []
    rng = np.random.default_rng(int(seed))
    return sorted(int(i) for i in rng.choice(np.arange(num_images), size=min(count, num_images), replace=False))


def to_u8(a: np.ndarray) -> np.ndarray:
    """[0,1] floats -> uint8 (round(255 a)); B x C x H x W images come back channels last."""
    u = np.round(np.clip(np.asarray(a, dtype=np.float32), 0, 1) * 255).astype(np.uint8)
    return u.transpose(0, 2, 3, 1) if u.ndim == 4 else u


def image_columns(index: np.ndarray, ids: list[str], labels: np.ndarray, images: np.ndarray, boxes: list[list[list[float]]],
                  class_names: list[str] | None) -> dict[str, Any]:
    """``example_images`` columns: ``images`` B x 3 x H x W in [0,1], ``boxes`` the valid boxes per image."""
    u8 = to_u8(images)
    h, w = u8.shape[1:3]
    names = [class_names[y] if class_names and 0 <= y < len(class_names) else None for y in labels.tolist()]
    return {"image_index": index.astype(np.int64), "image_id": list(ids), "label": labels.astype(np.int64), "class_name": names,
            "height": [h] * len(u8), "width": [w] * len(u8), "image": [im.tobytes() for im in u8], "boxes": boxes}


def map_columns(maps: np.ndarray, binary: np.ndarray, inpainted: np.ndarray) -> dict[str, Any]:
    """``example_maps`` data columns: ``maps`` B x H x W in [0,1], ``binary`` B x H x W (b: the
    salient pixels, removed in the masked-out image), ``inpainted`` B x 3 x H x W in [0,1]."""
    m, b = to_u8(maps), np.asarray(binary, dtype=bool)
    fill = np.where(b[..., None], to_u8(inpainted), 0).astype(np.uint8)
    h, w = m.shape[1:]
    return {"height": [h] * len(m), "width": [w] * len(m), "map": [a.tobytes() for a in m],
            "mask": [np.packbits(a.ravel()).tobytes() for a in b], "fill": [a.tobytes() for a in fill]}


def decode_image(row: dict[str, Any]) -> np.ndarray:
    """uint8 H x W x 3 image of an ``example_images`` row."""
    return np.frombuffer(row["image"], dtype=np.uint8).reshape(row["height"], row["width"], 3)


def decode_maps(row: dict[str, Any], image: np.ndarray) -> dict[str, np.ndarray]:
    """What the figure draws of an ``example_maps`` row of ``image`` (uint8 H x W x 3): ``map``
    (float H x W in [0,1]), ``mask`` (bool H x W), ``masked_in``, ``masked_out`` and ``inpainted``
    (uint8 H x W x 3)."""
    h, w = int(row["height"]), int(row["width"])
    mask = np.unpackbits(np.frombuffer(row["mask"], dtype=np.uint8), count=h * w).reshape(h, w).astype(bool)
    fill = np.frombuffer(row["fill"], dtype=np.uint8).reshape(h, w, 3)
    keep = mask[..., None]
    return {
        "map": np.frombuffer(row["map"], dtype=np.uint8).reshape(h, w).astype(np.float32) / 255, "mask": mask,
        "masked_in": np.where(keep, image, 0).astype(np.uint8), "masked_out": np.where(keep, 0, image).astype(np.uint8),
        "inpainted": np.where(keep, fill, image).astype(np.uint8),
    }


def read_examples(run_dir: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``example_images`` and ``example_maps`` rows of a run (completed batches only)."""
    images = read_table(run_dir, "example_images")
    maps = read_table(run_dir, "example_maps")
    return images.to_dict("records"), maps.to_dict("records")
