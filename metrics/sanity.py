"""Sanity checks (Adebayo et al., NeurIPS 2018): does the map depend on the model and the class?

The runner recomputes each method's maps for the first ``images`` images of the run with

* ``mprt``: the source classifier with its top 1, 2, ... layer groups re-initialised, cascading
  from the head down (``salbench.randomise``), at the configured ``depths`` and, with ``full``,
  every group (the whole network random);
* ``random_logit``: the trained classifier, for a random class other than the target (seeded per
  image; Sixt et al. / Quantus' RandomLogit),

and this metric compares each such map with the original one (table ``sanity``, one row per
image x method x source x test x depth). Three similarities, as in the paper: Spearman rank
correlation of the absolute maps, SSIM, and the Pearson correlation of the maps' HOG features.
A map that passes has *low* similarity: it changed when the model or the class did. Maps of
classifier-independent methods (controls, trained maskers) read neither, so the runner does not
recompute them: their rows compare the original map with itself (similarity 1), and the checks
fail them, as they must.

Libraries: torchmetrics' ``pearson_corrcoef`` and ``structural_similarity_index_measure`` (11x11
Gaussian window, sigma 1.5, data range 1; averaged over the valid region as scikit-image does),
batched over images. Two are written here, each pinned to a library by a test:

* Spearman (``spearman_abs``): torchmetrics' ``spearman_corrcoef`` ranks one column per Python
  call and loops over every group of tied values in it; CAM maps are full of ties (every pixel a
  ReLU zeroed), so it took 3.3 s of the 6.5 s the similarities cost in a 64-image profile (96 ms
  for 64 CAM-like 64x64 map pairs; 29 ms here). Here ties get average ranks (scipy's
  ``rankdata(method="average")``) by one sort and two scatters for the whole batch;
* HOG (``hog_features``): scikit-image's ``feature.hog`` is one image per call (1.8 ms at 64x64
  here, several seconds for a default run's sanity maps); this is the same algorithm (central
  differences, unsigned orientations binned by cell, 2x2-cell blocks, L2-Hys) batched in torch.
"""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure
from torchmetrics.functional.regression import pearson_corrcoef

from salbench.metrics.base import Metric, MetricInfo, register_metric

TESTS = ("mprt", "random_logit")


def _where_identical(a: torch.Tensor, b: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Identical maps have similarity 1 (also constant ones, whose correlation is undefined)."""
    same = (a.flatten(1) == b.flatten(1)).all(1)
    return torch.where(same, torch.ones_like(values), values)


def _corr(fn, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-column correlation; NaN where one column is constant and they differ."""
    const = (a == a[:1]).all(0) | (b == b[:1]).all(0)
    with warnings.catch_warnings():  # torchmetrics warns on constant columns: handled here
        warnings.simplefilter("ignore", UserWarning)
        out = fn(a, b) if a.shape[1] > 1 else fn(a[:, 0], b[:, 0]).reshape(1)
    return torch.where(const, torch.full_like(out, float("nan")), out)


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..N along the last dimension, tied values sharing their average rank (scipy's
    ``rankdata(method="average")``), for every row at once."""
    n = x.shape[-1]
    values, order = x.sort(dim=-1)  # tied values get one rank: their order does not matter
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[..., 1:] = values[..., 1:] != values[..., :-1]
    group = starts.cumsum(-1) - 1  # tie group of each sorted position
    position = torch.arange(1, n + 1, device=x.device, dtype=torch.float64).expand_as(values)
    total = torch.zeros_like(position).scatter_add_(-1, group, position)
    count = torch.zeros_like(position).scatter_add_(-1, group, torch.ones_like(position))
    return torch.empty_like(position).scatter_(-1, order, (total / count.clamp_min(1)).gather(-1, group))


def spearman_abs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image Spearman rank correlation of |a| and |b| (B x H x W each) -> B: the Pearson
    correlation of their average ranks; NaN where one map is constant and the other is not."""
    ra, rb = (average_ranks(m.abs().flatten(1)) for m in (a, b))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    den = torch.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    rho = torch.where(den > 0, (ra * rb).sum(1) / den.clamp_min(1e-300), torch.full_like(den, float("nan")))
    return _where_identical(a, b, rho.float())


SSIM_KERNEL = 11


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of maps in [0, 1] (B x H x W each) -> B.

    torchmetrics' SSIM map, averaged over the windows that lie inside the map (a 5-px border
    dropped), as Wang et al.'s reference code and scikit-image do; torchmetrics' own mean also
    counts the reflect-padded border, which moves a 64-px map's SSIM by up to 0.3.
    """
    _, full = structural_similarity_index_measure(a[:, None].float(), b[:, None].float(), data_range=1.0, reduction="none",
                                                  kernel_size=SSIM_KERNEL, sigma=1.5, return_full_image=True)
    r = SSIM_KERNEL // 2
    inner = full[:, :, r:-r, r:-r] if min(full.shape[-2:]) > 2 * r else full
    return _where_identical(a, b, inner.mean((1, 2, 3)))


def hog_features(maps: torch.Tensor, orientations: int = 9, cell: int = 8, block: int = 2, eps: float = 1e-5) -> torch.Tensor:
    """HOG of single-channel images (B x H x W) -> B x D, scikit-image's ``hog`` batched.

    Central-difference gradients (0 on the border), unsigned orientation in [0, 180) binned into
    ``orientations`` equal bins, per ``cell`` x ``cell`` cell the mean gradient magnitude per bin
    (cells that do not fit are dropped), blocks of ``block`` x ``block`` cells at stride one,
    L2-Hys normalised (clip 0.2), flattened in scikit-image's order.
    """
    x = maps.float()
    b, h, w = x.shape
    gr = torch.zeros_like(x)
    gc = torch.zeros_like(x)
    gr[:, 1:-1, :] = x[:, 2:, :] - x[:, :-2, :]
    gc[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    mag = torch.hypot(gr, gc)
    ori = torch.rad2deg(torch.atan2(gr, gc)) % 180.0
    bins = torch.clamp((ori / (180.0 / orientations)).floor().long(), 0, orientations - 1)
    nr, nc = h // cell, w // cell
    if nr < block or nc < block:
        raise ValueError(f"hog: {h}x{w} maps hold {nr}x{nc} cells of {cell} px, fewer than one {block}x{block} block")
    weighted = F.one_hot(bins[:, : nr * cell, : nc * cell], orientations).to(x.dtype) * mag[:, : nr * cell, : nc * cell, None]
    hist = weighted.reshape(b, nr, cell, nc, cell, orientations).mean((2, 4))  # B x nr x nc x O
    blocks = hist.unfold(1, block, 1).unfold(2, block, 1)  # B x nbr x nbc x O x block x block
    blocks = blocks.permute(0, 1, 2, 4, 5, 3).reshape(b, nr - block + 1, nc - block + 1, -1)
    out = blocks / torch.sqrt((blocks**2).sum(-1, keepdim=True) + eps**2)
    out = out.clamp(max=0.2)
    out = out / torch.sqrt((out**2).sum(-1, keepdim=True) + eps**2)
    return out.flatten(1)


def hog_similarity(a: torch.Tensor, b: torch.Tensor, cell: int = 8) -> torch.Tensor:
    """Per-image Pearson correlation of the two maps' HOG features -> B."""
    r = _corr(pearson_corrcoef, hog_features(a, cell=cell).transpose(0, 1), hog_features(b, cell=cell).transpose(0, 1))
    return _where_identical(a, b, r)


def random_other_class(targets: torch.Tensor, seeds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A class other than each target, uniform over the other ``num_classes - 1``, from per-image seeds."""
    if num_classes < 2:
        raise ValueError("the random-logit test needs at least two classes")
    offset = 1 + (seeds.to(torch.int64) % (num_classes - 1))
    return (targets.to(torch.int64) + offset.to(targets.device)) % num_classes


@dataclass
class SanityContext:
    """What a sanity-table metric sees: each original map and the map recomputed under one test."""

    original: torch.Tensor  # B x H x W
    other: torch.Tensor  # B x H x W, randomised model or random class
    test: str  # "mprt" | "random_logit"
    values: dict[str, torch.Tensor] = field(default_factory=dict)


def _str_tuple(v: Any, what: str) -> tuple[str, ...]:
    v = (v,) if isinstance(v, str) else tuple(v)
    if not all(isinstance(s, str) for s in v):
        raise ValueError(f"{what}={list(v)!r}: expected method names")
    return v


@register_metric
class Sanity(Metric):
    """MPRT and random-logit similarities of each recomputed map to the original one."""

    name = "sanity"
    table = "sanity"
    needs = frozenset({"maps", "source"})
    description = "sanity checks: similarity of maps under model randomisation / a random class to the original (lower passes)"
    columns = (
        MetricInfo("spearman", "lower", False, "Spearman rank correlation of the absolute maps (original vs recomputed)", aggregate=None, digits=2),
        MetricInfo("ssim", "lower", False, "SSIM of the maps (original vs recomputed)", aggregate=None, digits=2),
        MetricInfo("hog", "lower", False, "Pearson correlation of the maps' HOG features (original vs recomputed)", aggregate=None, digits=2),
    )
    summaries = (
        MetricInfo("mprt_spearman", "lower", False, "MPRT: Spearman of |map| between the trained and the fully randomised source "
                   "classifier (lower = more model-sensitive = passes)", ci=True, leaderboard=True, header="MPRT ρ (all random)",
                   digits=2, source="spearman"),
        MetricInfo("random_logit_ssim", "lower", False, "random-logit: SSIM between the map of the target class and of a random "
                   "other class (lower = more class-sensitive = passes)", ci=True, leaderboard=True, header="random-logit SSIM",
                   digits=2, source="ssim"),
    )
    #: Which rows each summary averages: (test, only the full randomisation).
    SUMMARY_ROWS = {"mprt_spearman": ("mprt", True), "random_logit_ssim": ("random_logit", False)}

    @dataclass(frozen=True)
    class Params:
        images: int = 32  # the first N images of the run (0: no sanity stage)
        depths: tuple = (1, 3)  # cascading depths in layer groups from the top (clipped to the network's)
        full: bool = True  # also the whole network randomised
        random_logit: bool = True
        exclude_methods: tuple = ("occlusion", "rise")  # names/wildcards: too expensive to recompute per depth
        seed: int = 0  # seed of the parameter re-initialisation
        hog_cell: int = 8  # HOG cell size in pixels (8 at 64 px; defaults_for scales it)

        def __post_init__(self) -> None:
            if self.images < 0:
                raise ValueError(f"images={self.images}: expected an integer >= 0")
            depths = (self.depths,) if isinstance(self.depths, int) else tuple(self.depths)
            if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in depths):
                raise ValueError(f"depths={list(depths)!r}: expected integers >= 1 (layer groups randomised from the top)")
            object.__setattr__(self, "depths", tuple(sorted(set(depths))))
            object.__setattr__(self, "exclude_methods", _str_tuple(self.exclude_methods, "exclude_methods"))
            if self.hog_cell < 1:
                raise ValueError(f"hog_cell={self.hog_cell}: expected an integer >= 1")

    @classmethod
    def defaults_for(cls, image_size: tuple[int, int]) -> dict[str, Any]:
        return {"hog_cell": max(4, min(image_size) // 8)}

    def depths_for(self, n_groups: int) -> list[int]:
        """The depths evaluated on a network of ``n_groups`` layer groups, shallow to full."""
        out = sorted({min(d, n_groups) for d in self.params.depths} | ({n_groups} if self.params.full else set()))
        return [d for d in out if d >= 1]

    def covers(self, method: str) -> bool:
        return not any(fnmatch.fnmatchcase(method, p) for p in self.params.exclude_methods)

    def compute(self, ctx: SanityContext) -> dict[str, torch.Tensor]:
        a, b = ctx.original, ctx.other
        cell = self.params.hog_cell
        hog = hog_similarity(a, b, cell) if min(a.shape[-2:]) >= 2 * cell else torch.full((len(a),), float("nan"), device=a.device)
        return {"spearman": spearman_abs(a, b), "ssim": ssim(a, b), "hog": hog}

