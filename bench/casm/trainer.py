"""Algorithm 1, one step at a time: the classifier update (eq. 8), the pool, the masker update.

One step k on a batch (x, y):
    1. encoder features of x -> mask m = m^(k-1)(x);
    2. unless the thinning is ``F``: one optimiser step of the current classifier f^(k-1) on eq. 8,
       ``1/2 [CE(f((1-m)x + m*fill), y) + CE(f(x), y)]`` (mask detached) -> f^(k);
    3. the pool F^(k) observes f^(k) (thinning rule, ``ClassifierPool``);
    4. f' is sampled from F^(k);
    5. one optimiser step of the masker on ``-S(m, f')`` (``masker_objective``).

Removed pixels are filled with the training set's mean colour (``fill``), in pixel space. f'
scores in eval mode (BN running statistics), like every evaluation classifier.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from salbench.casm.classifier import ClassifierInit
from salbench.casm.model import Masker, apply_mask
from salbench.casm.objective import masker_objective
from salbench.casm.pool import ClassifierPool, snapshot
from salbench.casm.spec import CasmSpec, parse_thinning
from salbench.util import jsonable

class CasmTrainer:
    """Algorithm 1 on in-memory batches. ``step(x, y)`` runs one iteration and returns its stats.

    ``classifier`` is a timm model (the classifier f, updated in place unless the thinning is F);
    ``fill`` is the removal colour (3 values, pixel space). Works on any device the tensors are on.
    """

    def __init__(
        self,
        spec: CasmSpec,
        classifier: nn.Module,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        input_size: Sequence[int],
        fill: Sequence[float] | torch.Tensor,
        interpolation: str = "bilinear",
        device: str | torch.device = "cpu",
        arch: Mapping[str, Any] | None = None,
        channels_last: bool = True,
    ):
        self.spec = spec
        self.channels_last = channels_last  # an execution detail (faster convs and pools on CPU)
        self.arch = dict(arch or {})  # arch, model_kwargs, modifications, num_classes: how load_masker rebuilds the encoder
        self.device = torch.device(device)
        self.thinning = parse_thinning(spec.thinning, spec.p_current, spec.pool_size)
        self.lam = spec.lam
        torch.manual_seed(spec.seed)
        self.f = classifier.to(self.device)
        encoder = self.f if spec.share_encoder else copy.deepcopy(self.f)
        self.masker = Masker(encoder, mean=mean, std=std, input_size=input_size, decoder_channels=spec.decoder_channels, interpolation=interpolation).to(self.device)
        if channels_last:
            self.f.to(memory_format=torch.channels_last)
            self.masker.to(memory_format=torch.channels_last)
        self.fill = torch.as_tensor(fill, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.masker_params = self.masker.decoder_parameters() + ([] if spec.share_encoder else list(self.masker.encoder.parameters()))
        groups = [{"params": self.masker.decoder_parameters(), "lr": spec.lr_masker, "base_lr": spec.lr_masker}]
        if not spec.share_encoder:
            groups.append({"params": list(self.masker.encoder.parameters()), "lr": spec.lr_classifier, "base_lr": spec.lr_classifier})
        self.opt_m = torch.optim.AdamW(groups, weight_decay=spec.weight_decay)
        self.opt_f = None
        if self.thinning.train_classifier:
            self.opt_f = torch.optim.AdamW(
                [{"params": list(self.f.parameters()), "lr": spec.lr_classifier, "base_lr": spec.lr_classifier}], weight_decay=spec.weight_decay
            )
        for p in self.f.parameters():  # F: f is fixed; otherwise trained by opt_f only
            p.requires_grad_(self.thinning.train_classifier)
        self.pool = ClassifierPool(self.thinning, spec.seed)
        self.pool.observe(0, self.f)
        self.version = 0
        self.step_no = 0
        self._scorer: nn.Module | None = None
        self._scorer_id: int | None = None

    @classmethod
    def from_init(cls, spec: CasmSpec, init: ClassifierInit, fill: Sequence[float], device: str | torch.device = "cpu") -> "CasmTrainer":
        return cls(
            spec, init.model, mean=init.mean, std=init.std, input_size=init.input_size, fill=fill, interpolation=init.interpolation, device=device,
            arch={"arch": init.arch, "model_kwargs": init.model_kwargs, "modifications": list(init.modifications), "num_classes": init.num_classes},
        )

    def masker_meta(self) -> dict[str, Any]:
        """What ``load_masker`` needs besides the weights: encoder architecture, normalisation, decoder."""
        if not self.arch:
            raise ValueError("masker_meta needs the trainer built with arch=... (CasmTrainer.from_init)")
        m = self.masker
        return {
            "arch": self.arch["arch"],
            "model_kwargs": jsonable(dict(self.arch.get("model_kwargs", {}))),
            "modifications": list(self.arch.get("modifications", [])),
            "num_classes": int(self.arch["num_classes"]),
            "mean": [float(v) for v in m.mean.flatten().tolist()],
            "std": [float(v) for v in m.std.flatten().tolist()],
            "input_size": [3, *m.input_size],
            "interpolation": m.interpolation,
            "fill": [round(float(v), 6) for v in self.fill.flatten().tolist()],
            "indices": list(m.indices),
            "decoder_channels": int(self.spec.decoder_channels),
            "share_encoder": self.spec.share_encoder,
        }

    # -- schedule ------------------------------------------------------------------------------
    def _set_lr(self) -> None:
        """Cosine decay from the base rate to 10% of it over ``spec.steps`` (no warm-up)."""
        t = min(1.0, self.step_no / max(1, self.spec.steps))
        factor = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))
        for opt in (self.opt_m, self.opt_f):
            if opt is not None:
                for g in opt.param_groups:
                    g["lr"] = g["base_lr"] * factor

    def _scorer_for(self, which: int | None) -> nn.Module:
        if which is None:
            return self.f
        version, state = self.pool.snapshots[which]
        if self._scorer is None:
            self._scorer = copy.deepcopy(self.f)
            for p in self._scorer.parameters():
                p.requires_grad_(False)
            self._scorer_id = None
        if self._scorer_id != version:  # versions are unique per snapshot (ids of evicted dicts are not)
            self._scorer.load_state_dict(state)
            self._scorer_id = version
        return self._scorer

    # -- one iteration ---------------------------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        spec, masker, f = self.spec, self.masker, self.f
        x, y = x.to(self.device), y.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        torch.manual_seed(spec.seed * 1_000_003 + self.step_no)  # stochastic layers, if any
        self._set_lr()
        train_f = self.thinning.train_classifier
        masker.train()
        f.train(train_f)
        xn = masker.normalize(x)

        # 1. mask m^(k-1)(x) from the encoder's stage features (+ clean logits of f^(k-1))
        with torch.set_grad_enabled(train_f):
            if spec.share_encoder:
                final, feats = f.forward_intermediates(xn, indices=masker.indices)
                logits_clean = f.forward_head(final)
                feats = [t.detach() for t in feats]
            else:
                logits_clean = f(xn)
        if not spec.share_encoder:
            feats = masker.stage_features(xn)
        mask = masker.decode(feats, x.shape[-2:])

        # 2. classifier update on clean and masked images (eq. 8)
        loss_f = float("nan")
        if train_f:
            logits_m = f(masker.normalize(apply_mask(x, mask.detach(), self.fill)))
            lf = 0.5 * (F.cross_entropy(logits_m, y) + F.cross_entropy(logits_clean, y))
            self.opt_f.zero_grad(set_to_none=True)
            lf.backward()
            if spec.grad_clip:
                nn.utils.clip_grad_norm_(f.parameters(), spec.grad_clip)
            self.opt_f.step()
            loss_f = lf.item()
            self.version += 1
            # 3. F^(k) = thinning(F^(k-1) + f^(k))
            self.pool.observe(self.version, f)

        # 4. sample f' from the pool; 5. masker update on -S(m, f')
        which = self.pool.sample(self.step_no)
        scorer = self._scorer_for(which)
        scorer.eval()  # eval-mode BN: per-image, so clean and masked images share one forward
        both = scorer(torch.cat([xn, masker.normalize(apply_mask(x, mask, self.fill))]))
        lc, lm = both[: len(x)].detach(), both[len(x) :]
        loss_m, terms = masker_objective(lc, lm, mask, score=spec.score, lambda_r=self.lam, targets=y)
        grads = torch.autograd.grad(loss_m, self.masker_params, allow_unused=True)
        for p, g in zip(self.masker_params, grads):
            p.grad = g
        if spec.grad_clip:
            nn.utils.clip_grad_norm_(self.masker_params, spec.grad_clip)
        self.opt_m.step()
        self.opt_m.zero_grad(set_to_none=True)
        f.train(train_f)
        self.step_no += 1
        return {
            "step": self.step_no,
            "loss_masker": loss_m.item(),
            "loss_classifier": loss_f,
            "score": terms["score"].mean().item(),
            "area": terms["area"].mean().item(),
            "changed": terms["changed"].float().mean().item(),
            "masked_acc": (lm.argmax(1) == y).float().mean().item(),
            "clean_acc": (logits_clean.argmax(1) == y).float().mean().item(),
            "scorer_version": float(self.pool.current_version if which is None else self.pool.snapshots[which][0]),
            "pool_size": float(len(self.pool.members())),
        }

    # -- checkpoints -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The resumable state: only ints, floats, strings, lists, dicts and tensors, so that it
        loads with ``torch.load(weights_only=True)`` (no pickled objects; see ``checkpoints``).
        No RNG state is needed: every random draw is seeded from (seed, step)."""
        return {
            "step": int(self.step_no),
            "version": int(self.version),
            "classifier": snapshot(self.f),
            "masker": snapshot(self.masker),
            "opt_m": self.opt_m.state_dict(),
            "opt_f": self.opt_f.state_dict() if self.opt_f is not None else None,
            "pool": self.pool.state(),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore ``state()``; raises ValueError/KeyError/RuntimeError on a state of another shape."""
        step, version = state["step"], state["version"]
        if not isinstance(step, int) or not isinstance(version, int) or not 0 <= step <= self.spec.steps or not 0 <= version <= step:
            raise ValueError(f"training state: step={step!r}, version={version!r} out of range for {self.spec.steps} steps")
        if (state.get("opt_f") is None) != (self.opt_f is None):
            raise ValueError("training state: classifier optimiser state does not match the thinning")
        self.f.load_state_dict(state["classifier"], strict=True)
        self.masker.load_state_dict(state["masker"], strict=True)
        self.opt_m.load_state_dict(state["opt_m"])
        if self.opt_f is not None:
            self.opt_f.load_state_dict(state["opt_f"])
        self.pool.load_state(state["pool"])
        self.step_no = step
        self.version = version
        self._scorer_id = None



__all__ = ["CasmTrainer"]
