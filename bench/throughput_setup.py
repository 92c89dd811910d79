"""What a throughput measurement runs: its configuration, the classifiers and the inputs.

Plain timm names mean randomly initialised weights (``random:<name>``: cost does not depend on
the weights); images are smooth random images (cost does not depend on content) that each
classifier resizes to its own input size, as in a run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
import torch.nn.functional as F

from salbench.classifiers import ModelOptions, expand_model_specs, load_classifier
from salbench.device import resolve_dtype
from salbench.errors import UsageError, close_matches
from salbench.methods import METHODS
from salbench.registry import is_pattern, split_list


@dataclass
class ThroughputConfig:
    methods: list[str] = field(default_factory=lambda: ["*"])
    models: list[str] = field(default_factory=lambda: ["resnet18"])
    batch_sizes: list[int] = field(default_factory=lambda: [8])
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    channels_last: list[bool] = field(default_factory=lambda: [False])
    compiled: list[bool] = field(default_factory=lambda: [False])
    image_size: int = 224
    iters: int = 10
    warmup: int = 3
    device: str = "auto"
    pipeline_eval_models: int = 0
    baseline: bool = True
    pretrained: bool = False
    inpaint: str = "telea"
    binarize: str = "mean_area"
    box: str = "largest"
    seed: int = 0
    model_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # as RunSpec.model_overrides
    threads: int | None = None  # CPU intra-op threads (torch.set_num_threads); None: leave as is

    def __post_init__(self) -> None:
        for key in ("methods", "models", "dtypes"):
            v = getattr(self, key)
            if isinstance(v, str):
                setattr(self, key, split_list(v))
        if not self.models:
            raise UsageError("no models given: expected e.g. --models resnet18,vit_tiny_patch16_224")
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise UsageError(f"batch sizes {self.batch_sizes}: expected positive integers")
        if self.image_size < 8:
            raise UsageError(f"image size {self.image_size}: expected at least 8 pixels")
        if self.iters < 1 or self.warmup < 0:
            raise UsageError(f"iters={self.iters}, warmup={self.warmup}: expected iters >= 1 and warmup >= 0")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads={self.threads}: expected a positive number")
        if self.pipeline_eval_models < 0:
            raise UsageError(f"pipeline eval models {self.pipeline_eval_models}: expected N >= 0")
        for d in self.dtypes:
            resolve_dtype(d)


def model_spec(name: str, pretrained: bool = False) -> str:
    """Classifier spec for the throughput command: plain timm names mean random init."""
    if pretrained or name.startswith(("random:", "zoo:")) or "@" in name:
        return name
    return f"random:{name}"


def expand_models(names: Iterable[str], pretrained: bool = False) -> list[str]:
    """Expand wildcards (timm ``list_models``) and check every timm name before measuring."""
    out: list[str] = []
    for item in names:
        if item.startswith("zoo:") or "@" in item or (pretrained and not item.startswith("random:")):
            hits = expand_model_specs([item])
        else:
            arch = item.split(":", 1)[1] if item.startswith("random:") else item
            if is_pattern(arch):
                hits = [f"random:{a}" for a in timm.list_models(arch)]
                if not hits:
                    raise UsageError(f"model pattern {item!r} matches nothing")
            else:
                base = arch.split(".")[0]
                if not timm.is_model(base):
                    raise UsageError(f"unknown timm model {base!r}{close_matches(base, timm.list_models())}")
                hits = [f"random:{arch}"]
        out.extend(h for h in hits if h not in out)
    return out


def select_methods(spec: Iterable[str] | str | None) -> list[str]:
    """Method names; the default ``*`` leaves out methods that need a trained checkpoint."""
    names = split_list(spec) or ["*"]
    chosen = METHODS.select(names)
    if names == ["*"]:
        chosen = [m for m in chosen if not METHODS.get(m).capabilities.needs_training]
    return chosen


def method_params(name: str, image_size: int) -> dict[str, Any]:
    """The parameters a run at this image size would use (``SaliencyMethod.defaults_for``)."""
    cls = METHODS.get(name)
    defaults_for = getattr(cls, "defaults_for", None)
    return dict(defaults_for((image_size, image_size))) if defaults_for else {}


def synthetic_inputs(batch_size: int, image_size: int, num_classes: int, device: torch.device, seed: int = 0):
    """Smooth random images in [0,1], random targets and one random GT box per image."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch_size, 3, 7, 7, generator=g)
    x = F.interpolate(low, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (0.85 * x + 0.15 * torch.rand(batch_size, 3, image_size, image_size, generator=g)).clamp(0, 1)
    targets = torch.randint(0, num_classes, (batch_size,), generator=g)
    wh = torch.randint(image_size // 4, image_size // 2 + 1, (batch_size, 2), generator=g).float()
    xy = (torch.rand(batch_size, 2, generator=g) * (image_size - wh)).floor()
    boxes = torch.cat([xy, xy + wh], dim=1)[:, None, :]
    valid = torch.ones(batch_size, 1, dtype=torch.bool)
    return x.to(device), targets.to(device), boxes.to(device), valid.to(device)


def forward_only(classifier, images: torch.Tensor) -> torch.Tensor:
    """One no-grad forward pass (the scoring pass eval classifiers make)."""
    with torch.no_grad():
        return classifier(images)


def forward_backward_baseline(classifier, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """One forward pass and one backward pass of the target scores to the pixel input."""
    with torch.enable_grad():
        x = images.detach().requires_grad_(True)
        scores = classifier(x).gather(1, targets.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(scores, x)
    return grad


def compile_classifier(classifier) -> None:
    """``torch.compile`` the timm model's ``forward_features`` and ``forward_head`` in place.

    Every salbench path goes through those two (``forward`` is rebound to call them), so both
    plain classification and ``forward_with_features`` use the compiled code.
    """
    model = classifier.model
    ff = torch.compile(model.forward_features)
    fh = torch.compile(model.forward_head)
    model.forward_features = ff
    model.forward_head = fh
    model.forward = lambda x: fh(ff(x))


def load_for_throughput(spec: str, device: torch.device, dtype: str, channels_last: bool, compiled: bool, seed: int = 0,
                        overrides: dict[str, dict[str, Any]] | None = None):
    """A classifier as the throughput command measures it (seeded random init, optionally compiled)."""
    torch.manual_seed(seed)  # random-init weights identical across configurations
    overrides = overrides or {}
    bare = spec.removeprefix("random:")
    mine = overrides.get(spec, overrides.get(bare))  # "resnet18" in a config means "random:resnet18" here
    options = ModelOptions(device=device, amp_dtype=resolve_dtype(dtype), channels_last=channels_last, overrides={spec: dict(mine)} if mine else {})
    clf = load_classifier(spec, options)
    if compiled:
        compile_classifier(clf)
    return clf
