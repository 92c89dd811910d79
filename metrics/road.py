"""ROAD: RemOve And Debias (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for
Attribution Methods", ICML).

Remove the most (MoRF) or least (LeRF) relevant fraction of the pixels, fill them by *noisy linear
imputation* and ask the source classifier again: a faithful map makes MoRF accuracy fall fast and
LeRF accuracy stay high. The imputation (the paper's Sec. 4, its ``NoisyLinearImputer``): every
removed pixel equals the weighted mean of its 8 neighbours inside the image (1/6 direct, 1/12
diagonal), known pixels fixed; then Gaussian noise (std ``noise``) on the removed pixels.

The reference code and pytorch-grad-cam build one scipy sparse system per image and call
``spsolve`` on the CPU. Here, on a GPU, the same systems, for every image, channel, fraction and
order at once, are solved by Jacobi-preconditioned conjugate gradients (the matrix is symmetric
positive definite wherever a removed region touches a known pixel), in float32, started from a
coarse-to-fine masked-average fill; each system stops on its own at ``||r|| <= tol * ||b||``, so an
image's result does not depend on its batch. On a CPU each image's system is solved exactly by a
banded Cholesky factorisation (``solver``: ``_banded_impute``), faster there than the CG.
``tests/metrics/test_road.py`` checks both against ``scipy.sparse.linalg.spsolve`` on the
reference system.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch
import torch.nn.functional as F

from salbench.metrics._util import mask_keys
from salbench.metrics.base import MapContext, Metric, MetricInfo, register_metric
from salbench.metrics.perturbation import removal_rank, scatter_rows, subsample, target_scores, tie_seeds
from salbench.rng import derive_seeds, uniform

_LIST = pa.list_(pa.float32())
#: (dy, dx, weight) of the 8 neighbours, as in the paper's code (sum 1 in the interior).
NEIGHBOURS = ((-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12), (0, -1, 1 / 6), (0, 1, 1 / 6), (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12))


def _neighbour_sum(v: torch.Tensor) -> torch.Tensor:
    """sum_o w_o * v(p + o) over the 8 neighbours inside the image (zeros outside).

    The paper's weights are separable: (k k^T - 4 delta) / 12 with k = (1, 2, 1), so four shifted
    adds instead of eight; elementwise, hence the same for an image in any batch.
    """
    t = 2 * v
    t[..., 1:, :] += v[..., :-1, :]
    t[..., :-1, :] += v[..., 1:, :]
    s = 2 * t
    s[..., :, 1:] += t[..., :, :-1]
    s[..., :, :-1] += t[..., :, 1:]
    return (s - 4 * v) / 12


def _coarse_fill(x: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """A cheap first guess: removed pixels from masked averages on coarser and coarser grids."""
    if min(x.shape[-2:]) <= 2 or bool(known.all()):
        return x * known
    num = F.avg_pool2d(x * known, 2, ceil_mode=True)
    den = F.avg_pool2d(known, 2, ceil_mode=True)
    coarse_known = (den > 0).to(x.dtype)
    coarse = _coarse_fill(num / den.clamp_min(1e-12), coarse_known)
    up = F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return torch.where(known > 0, x, up)


def _coarse_guess(xs: torch.Tensor, u: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor:
    """First guess for the removed pixels (cascadic CG): the same imputation solved on the 2x
    coarser grid (a coarse pixel is known where any of its 4 pixels is), upsampled; below 16 px,
    the masked-average pyramid fill."""
    h, w = xs.shape[-2:]
    known = (1 - u)[:, None]
    if min(h, w) < 16:
        return _coarse_fill(xs[:, None], known)[:, 0]
    num = F.avg_pool2d(xs[:, None] * known, 2, ceil_mode=True)
    den = F.avg_pool2d(known, 2, ceil_mode=True)
    coarse_x = (num / den.clamp_min(1e-12))[:, 0]
    coarse, _ = _solve(coarse_x, den[:, 0] == 0, tol, max_iter)
    return F.interpolate(coarse[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]


SOLVERS = ("auto", "cg", "banded")


@torch.no_grad()
def linear_impute(x: torch.Tensor, removed: torch.Tensor, tol: float = 1e-4, max_iter: int = 500,
                  solver: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's linear imputation (no noise) of N x C x H x W images where ``removed`` (N x H x W
    bool) is set; returns (filled images, CG iterations per image: 0 from the direct solve).

    ``D v - W_UU v = W_UK x`` on the removed set U (D: the neighbour weights inside the image):

    * ``cg``: every image and channel at once, Jacobi-preconditioned CG to ``||r|| <= tol * ||b||``
      per system, in float32. A system that converged is frozen; the working set shrinks to the
      systems still running whenever a quarter of it has converged. The device path;
    * ``banded``: exact, per image (``_banded_impute``): the CPU path;
    * ``auto``: ``banded`` for CPU tensors, ``cg`` elsewhere.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r}: expected one of {', '.join(SOLVERS)}")
    n, c, h, w = x.shape
    if solver == "banded" or (solver == "auto" and x.device.type == "cpu"):
        out = _banded_impute(x, removed)
        return torch.where(removed[:, None], out.to(x.dtype), x), torch.zeros(n, dtype=torch.int64, device=x.device)
    out, iters = _solve(x.float().reshape(n * c, h, w), removed[:, None].expand(n, c, h, w).reshape(n * c, h, w), tol, max_iter)
    return torch.where(removed[:, None], out.reshape(n, c, h, w).to(x.dtype), x), iters.view(n, c).amax(1)


def _banded_impute(x: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """The imputation solved exactly on a CPU: per image one banded Cholesky solve (LAPACK
    ``pbsv`` through ``scipy.linalg.solveh_banded``, float64) for all its channels.

    The unknowns are the removed pixels in row-major order; a removed pixel's row is the paper's
    equation with its known neighbours moved to the right. The matrix is symmetric, positive
    definite whenever some pixel is known (every removed region then touches a known pixel), and
    banded: a pixel couples only to the row below, so the half-bandwidth is the number of removed
    pixels within one image row plus one (at most W + 1) and the factorisation costs about
    (removed pixels) x bandwidth^2. Per image because LAPACK has no batched banded solver (and
    scipy holds the GIL in it, so a thread pool does not help); it is exact, where CG stops at a
    residual, and faster on this project's 2-core CPU: in a 64-image default run the imputations
    took 4.3 s against the batched CG's 10.7 s (ROAD 6.0 s against 12.5 s). OpenBLAS is held to
    one thread meanwhile: its threads, left spinning after a call, had doubled both the solves' time
    and the torch work that follows. An image with every pixel removed has no solution; it is left
    to the CG path, which returns its coarse fill.
    """
    import numpy as np
    from scipy.linalg import LinAlgError, solveh_banded
    from threadpoolctl import threadpool_limits

    n, c, h, w = x.shape
    xs = x.detach().to("cpu", torch.float64)
    rem_t = removed.detach().to("cpu")
    rem = rem_t.reshape(n, h * w).numpy()
    d = _neighbour_sum(torch.ones(1, h, w, dtype=torch.float64))[0].reshape(-1).numpy()
    known_sum = _neighbour_sum(xs * (~rem_t)[:, None].to(torch.float64)).reshape(n, c, h * w).numpy()
    out = xs.reshape(n, c, h * w).numpy().copy()
    yy, xx = np.divmod(np.arange(h * w), w)
    # (offset to the later neighbour in row-major order, weight, pixels p whose neighbour p + offset is in the image)
    couplings = [(off, wt, np.nonzero(ok)[0]) for off, wt, ok in (
        (1, 1 / 6, xx + 1 < w), (w - 1, 1 / 12, (yy + 1 < h) & (xx >= 1)), (w, 1 / 6, yy + 1 < h), (w + 1, 1 / 12, (yy + 1 < h) & (xx + 1 < w)))]
    left = []  # images without a solution: the CG path below
    with threadpool_limits(1, user_api="blas"):  # pbsv is level-2 work; OpenBLAS threads left spinning slow the next torch ops
        for i in range(n):
            u = rem[i]
            ids = np.nonzero(u)[0]
            if len(ids) == 0:
                continue
            if len(ids) == h * w:
                left.append(i)
                continue
            order = np.cumsum(u) - 1  # unknown number of each removed pixel
            pairs = [(order[p], order[p + off], wt) for off, wt, p in ((off, wt, p[u[p] & u[p + off]]) for off, wt, p in couplings)]
            r = np.concatenate([a for a, _, _ in pairs])
            col = np.concatenate([c for _, c, _ in pairs])
            v = np.concatenate([np.full(len(a), -wt) for a, _, wt in pairs])
            band = int((col - r).max()) if len(r) else 0
            ab = np.zeros((band + 1, len(ids)))
            ab[band] = d[ids]
            ab[band - (col - r), col] = v  # upper form: ab[band + i - j, j] = a[i, j], i < j
            try:
                out[i][:, ids] = solveh_banded(ab, known_sum[i][:, ids].T, lower=False, check_finite=False).T
            except LinAlgError:
                left.append(i)
    result = torch.from_numpy(out).float().reshape(n, c, h, w)
    if left:
        sel = torch.tensor(left)
        result[sel] = linear_impute(x[sel].cpu(), removed[sel].cpu(), solver="cg")[0].float()
    return result.to(x.device)


def _solve(xs: torch.Tensor, removed: torch.Tensor, tol: float, max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``linear_impute`` of S single-channel systems S x H x W (float32); iterations per system."""
    h, w = xs.shape[-2:]
    u_all = removed.float()
    d = _neighbour_sum(torch.ones(1, h, w, device=xs.device))
    rhs_all = u_all * _neighbour_sum(xs * (1 - u_all))
    v_all = u_all * _coarse_guess(xs, u_all, tol, max_iter)
    iters = torch.zeros(len(xs), dtype=torch.int64, device=xs.device)

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum((-2, -1), keepdim=True)

    idx = torch.arange(len(xs), device=xs.device)
    u, v, rhs = u_all, v_all.clone(), rhs_all
    r = rhs - u * (d * v - _neighbour_sum(u * v))
    z = r / d
    p = z.clone()
    rz = dot(r, z)
    limit = (tol * tol) * dot(rhs, rhs)
    active = dot(r, r) > limit
    for _ in range(max_iter):
        n_active = int(active.sum())
        if n_active == 0:
            break
        if n_active <= 0.75 * len(idx):  # compact: keep the running systems only
            v_all[idx] = v
            keep = active.flatten().nonzero().flatten()
            idx, u, v, r, p, rz, limit, active = (t[keep] for t in (idx, u, v, r, p, rz, limit, active))
        iters[idx] += active.flatten()
        q = u * (d * p - _neighbour_sum(u * p))
        pq = dot(p, q)
        alpha = torch.where(active, rz / torch.where(pq > 0, pq, torch.ones_like(pq)), torch.zeros_like(pq))
        v = v + alpha * p
        r = r - alpha * q
        z = r / d
        rz_new = dot(r, z)
        beta = torch.where(active, rz_new / torch.where(rz > 0, rz, torch.ones_like(rz)), torch.zeros_like(rz))
        p = torch.where(active, z + beta * p, p)
        rz = torch.where(active, rz_new, rz)
        active = active & (dot(r, r) > limit)
    v_all[idx] = v
    return xs * (1 - u_all) + u_all * v_all, iters


def noisy_linear_impute(x: torch.Tensor, removed: torch.Tensor, seeds: torch.Tensor, noise: float = 0.01, tol: float = 1e-4,
                        max_iter: int = 500, solver: str = "auto") -> torch.Tensor:
    """``linear_impute`` plus N(0, noise^2) on the removed pixels, drawn from the per-image ``seeds``
    (Box-Muller on counter-based uniforms: the same draws for an image in any batch)."""
    filled, _ = linear_impute(x, removed, tol, max_iter, solver)
    if noise <= 0:
        return filled
    shape = tuple(x.shape[1:])
    u1 = uniform(seeds, shape, device=x.device).clamp_min(2.0**-32)
    u2 = uniform(derive_seeds(seeds, torch.ones_like(seeds)), shape, device=x.device)
    gauss = torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)
    return filled + noise * gauss * removed[:, None].to(x.dtype)


def removal_masks(rank: torch.Tensor, fractions: tuple[float, ...], shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """MoRF and LeRF removal masks, F x B x H x W each: the round(f * H * W) most / least salient pixels."""
    n = rank.shape[1]
    counts = torch.tensor([round(f * n) for f in fractions], device=rank.device)[:, None, None]
    morf = rank[None] < counts
    lerf = rank[None] >= n - counts
    return morf.view(len(fractions), -1, *shape), lerf.view(len(fractions), -1, *shape)


@register_metric
class Road(Metric):
    """ROAD MoRF / LeRF by the source classifier, per removal fraction, on noisy linear imputation."""

    name = "road"
    needs = frozenset({"maps", "model"})
    description = "ROAD (Rong et al. 2022): accuracy after removing the most / least relevant pixels, noisy linear imputation"
    columns = (
        MetricInfo("road_morf", "lower", True, "ROAD MoRF: source accuracy on the target, mean over removal fractions, most relevant removed first",
                   ci=True, leaderboard=True, compare=True, header="ROAD MoRF %"),
        MetricInfo("road_lerf", "higher", True, "ROAD LeRF: source accuracy on the target, mean over removal fractions, least relevant removed first",
                   ci=True, leaderboard=True, compare=True, header="ROAD LeRF %"),
        MetricInfo("road_gap", "higher", False, "ROAD LeRF minus MoRF accuracy (mean over fractions, in [-1, 1]): the faithfulness summary",
                   ci=True, leaderboard=True, compare=True, header="ROAD gap", digits=3),
        MetricInfo("road_morf_prob", "lower", False, "ROAD MoRF: target probability, mean over removal fractions", digits=3),
        MetricInfo("road_lerf_prob", "higher", False, "ROAD LeRF: target probability, mean over removal fractions", digits=3),
        MetricInfo("road_morf_curve", None, False, "ROAD MoRF target probability per removal fraction", aggregate=None, dtype=_LIST),
        MetricInfo("road_lerf_curve", None, False, "ROAD LeRF target probability per removal fraction", aggregate=None, dtype=_LIST),
        MetricInfo("road_morf_hits", None, False, "ROAD MoRF top-1 hit (0/1) per removal fraction", aggregate=None, dtype=_LIST),
        MetricInfo("road_lerf_hits", None, False, "ROAD LeRF top-1 hit (0/1) per removal fraction", aggregate=None, dtype=_LIST),
    )

    @dataclass(frozen=True)
    class Params:
        fractions: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
        noise: float = 0.01  # std of the imputation noise, pixel units [0, 1] (the paper's 0.01)
        tol: float = 1e-4  # CG stops at ||r|| <= tol * ||b|| per image and channel
        max_iter: int = 500
        solver: str = "auto"  # "banded" (exact, per image: the CPU default), "cg" (batched: the device default), "auto"
        stride: int = 1  # score the images whose dataset index is divisible by stride
        chunk: int = 0  # images per classifier call (0: by device, perturbation.auto_chunk)
        seed: int = 0  # tie order and noise draws

        def __post_init__(self) -> None:
            f = self.fractions
            if (not isinstance(f, (list, tuple)) or not f
                    or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1 for v in f)):
                raise ValueError(f"fractions={f!r}: expected a non-empty list of removal fractions in (0, 1)")
            object.__setattr__(self, "fractions", tuple(float(v) for v in f))
            for key, low in (("stride", 1), ("chunk", 0), ("max_iter", 1)):
                if getattr(self, key) < low:
                    raise ValueError(f"{key}={getattr(self, key)!r}: expected an integer >= {low}")
            if self.solver not in SOLVERS:
                raise ValueError(f"solver={self.solver!r}: expected one of {', '.join(SOLVERS)}")
            if self.noise < 0 or not self.tol > 0:
                raise ValueError(f"noise={self.noise!r}, tol={self.tol!r}: expected noise >= 0 and tol > 0")

    @classmethod
    def defaults_for(cls, image_size: tuple[int, int]) -> dict[str, Any]:
        return {"fractions": (0.2, 0.5, 0.8), "stride": 16} if max(image_size) <= 64 else {}

    def cost(self) -> tuple[float, float, float]:
        """MoRF and LeRF at every fraction on every ``stride``-th image (the imputation's solve is
        not a classifier pass and is not priced)."""
        return (2 * len(self.params.fractions) / self.params.stride, 0.0, 0.0)

    def _scores(self, ctx: MapContext, x: torch.Tensor, removed: torch.Tensor, which: torch.Tensor, index: torch.Tensor, seeds: torch.Tensor,
                targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The source's target probability and hit on each imputed image. An (image, fraction and
        order, removal mask) the source already scored on that target in this batch is neither
        imputed nor scored again: the batch's ``shared`` cache keeps the two numbers, not the image.

        The imputed image depends on the image, the removal mask and the noise seed (image index,
        fraction and order) alone: maps that coincide (Grad-CAM, HiResCAM, XGrad-CAM and CAM on the
        zoo's GAP-linear heads) remove the same pixels."""
        p, cache = self.params, (ctx.shared if ctx.shared is not None else {})
        setting = ("road", ctx.source_model, p.noise, p.tol, p.max_iter, p.solver, p.seed)
        keys = [(*setting, *key) for key in zip(index.tolist(), which.tolist(), targets.tolist(), mask_keys(removed))]
        todo = [j for j, key in enumerate(keys) if key not in cache]  # (index, which) is unique within one call
        if todo:
            sel = torch.tensor(todo, device=x.device)
            images = noisy_linear_impute(x[sel], removed[sel], seeds[sel], p.noise, p.tol, p.max_iter, p.solver)
            prob, hit = target_scores(ctx.classifiers[ctx.source_model], images, targets[sel], p.chunk)
            cache.update({keys[j]: (prob[k], hit[k]) for k, j in enumerate(todo)})
        prob, hit = zip(*(cache[key] for key in keys))
        return torch.stack(prob), torch.stack(hit)

    def compute(self, ctx: MapContext) -> dict[str, torch.Tensor]:
        p = self.params
        batch, n = ctx.batch, len(ctx.maps)
        rows = subsample(batch.index, p.stride)
        if not len(rows):  # none of this batch's images is scored: every column null
            nan = torch.full((n, len(p.fractions)), float("nan"), device=ctx.maps.device)
            return {c.column: nan if c.aggregate is None else nan[:, 0] for c in self.columns}
        x, maps, targets = batch.images[rows], ctx.maps[rows], ctx.targets[rows]
        h, w = maps.shape[-2:]
        seeds = tie_seeds(batch.index[rows], p.seed, 0x20AD)
        morf, lerf = removal_masks(removal_rank(maps, seeds), p.fractions, (h, w))
        nf, b = len(p.fractions), len(rows)
        removed = torch.cat([morf, lerf]).reshape(2 * nf * b, h, w)
        which = torch.arange(2 * nf, device=x.device).repeat_interleave(b)
        prob, hit = self._scores(ctx, x.repeat(2 * nf, 1, 1, 1), removed, which, batch.index[rows].repeat(2 * nf), derive_seeds(seeds.repeat(2 * nf), which),
                                 targets.repeat(2 * nf))
        prob, hit = prob.view(2, nf, b), hit.view(2, nf, b).float()
        mean = [sum(t.unbind(0)) / nf for t in (hit[0], hit[1], prob[0], prob[1])]  # elementwise: the same in any batch
        out = {
            "road_morf": mean[0], "road_lerf": mean[1], "road_gap": mean[1] - mean[0], "road_morf_prob": mean[2], "road_lerf_prob": mean[3],
            "road_morf_curve": prob[0].T, "road_lerf_curve": prob[1].T, "road_morf_hits": hit[0].T, "road_lerf_hits": hit[1].T,
        }
        return {k: scatter_rows(v, rows, n) for k, v in out.items()}
