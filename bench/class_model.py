"""Class-model visualisation (Simonyan, Vedaldi & Zisserman 2013, section 2).

For each class c, a locally optimal image of

    argmax_I  S_c(I) - l2 * ||I||_2^2

where S_c is the *unnormalised* class score (a logit, not the softmax probability: maximising a
probability can be done by pushing the other classes down) and I the classifier's input after its
normalisation, at its input size. As in the paper the optimisation starts from the zero image,
i.e. the mean colour in pixel space, and the image shown is I mapped back to pixels (I std + mean:
"the mean image added to the result"), clipped to [0, 1] for display only.

Gradient ascent with Adam (the paper back-propagates to the input with fixed weights and names no
optimiser; plain ascent with momentum at lr 1 left zoo:resnet's score flat near the zero image for
50 steps, where its gradient is tiny, while Adam's per-pixel steps are scale-free); every class of the request is one image of one batch, optimised
at once (class c's objective depends only on image c, so the batch changes nothing). The
score history is kept so that callers (and tests) can see it rise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from salbench.device import autocast
from salbench.errors import UsageError


@dataclass(frozen=True)
class ClassModels:
    classes: list[int]
    images: torch.Tensor  # K x 3 x H x W, pixel space, clipped to [0, 1]
    scores: torch.Tensor  # steps+1 x K: S_c of each image before each step and at the end
    top1: torch.Tensor  # K: the classifier's top-1 class on the final (unclipped) input


def parse_classes(text: str, num_classes: int | None = None) -> list[int]:
    """'0,3,7' -> [0, 3, 7]; one line naming the value and what was expected otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p.lstrip("-").isdigit() for p in parts):
        raise UsageError(f"--classes {text!r}: expected comma-separated class indices, e.g. 0,3,7")
    classes = [int(p) for p in parts]
    if len(set(classes)) != len(classes):
        raise UsageError(f"--classes {text!r}: a class is listed twice")
    if num_classes is not None:
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad:
            raise UsageError(f"--classes {text!r}: {bad[0]} is not a class of this model; expected 0 to {num_classes - 1}")
    return classes


def optimise(classifier, classes: list[int], steps: int = 100, lr: float = 0.1, l2: float = 1e-3) -> ClassModels:
    """Gradient ascent on S_c - l2 ||I||^2 from the zero image, all classes as one batch."""
    if steps < 1 or lr <= 0 or l2 < 0:
        raise UsageError(f"class model: steps={steps}, lr={lr}, l2={l2}: expected steps >= 1, lr > 0, l2 >= 0")
    model = classifier.model
    device = classifier.device
    _, h, w = classifier.preprocess.input_size
    target = torch.tensor(classes, device=device)
    image = torch.zeros(len(classes), 3, h, w, device=device, requires_grad=True)
    opt = torch.optim.Adam([image], lr=lr)
    history = []
    with torch.enable_grad():
        for _ in range(steps):
            with autocast(device, classifier.amp_dtype):
                scores = model(image).float().gather(1, target[:, None])[:, 0]
            history.append(scores.detach())
            objective = scores - l2 * image.pow(2).flatten(1).sum(1)
            opt.zero_grad(set_to_none=True)
            (-objective.sum()).backward()
            opt.step()
    with torch.no_grad(), autocast(device, classifier.amp_dtype):
        logits = model(image).float()
    history.append(logits.gather(1, target[:, None])[:, 0])
    pixels = (image.detach() * classifier.std + classifier.mean).clamp(0, 1)
    return ClassModels(classes, pixels.cpu(), torch.stack(history).cpu(), logits.argmax(1).cpu())


def class_names(spec: str, num_classes: int) -> list[str] | None:
    """Names the model's classes are known by: the zoo's synthetic classes, ImageNet-1k lemmas."""
    if spec.startswith("zoo:"):
        from salbench import zoo

        meta = zoo.zoo_dir(spec[4:]) / "meta.json"
        if meta.exists():
            names = json.loads(meta.read_text()).get("class_names")
            if names and len(names) == num_classes:
                return list(names)
        return None
    if num_classes == 1000:
        from salbench.datasets.imagenet_classes import synset_lemmas

        return [lemma.split(",")[0] for lemma in synset_lemmas()]
    return None


def grid_png(result: ClassModels, names: list[str] | None, title: str) -> bytes:
    """One panel per class: the image, its class name and final score."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    k = len(result.classes)
    cols = min(k, 5)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, c in enumerate(result.classes):
        ax = axes.flat[i]
        ax.imshow(result.images[i].permute(1, 2, 0).numpy(), interpolation="nearest")
        label = f"{c}: {names[c]}" if names else f"class {c}"
        ax.set_title(f"{label}\nS_c = {result.scores[-1, i].item():.1f}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def write_grid(result: ClassModels, names: list[str] | None, title: str, out: str | Path) -> Path:
    from salbench.store import atomic_write_bytes

    path = Path(out)
    atomic_write_bytes(path, grid_png(result, names, title))
    return path
