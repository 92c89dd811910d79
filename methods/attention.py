"""Attention rollout (Abnar & Zuidema 2020) for timm ViT / DeiT classifiers.

Per block l the heads' softmax attention is averaged, the identity is added for the residual
connection and every row is renormalised: A_l = (mean_h att_lh + I) / 2 (each attention row sums
to 1, so this is the row renormalisation). The rollout is the product through the blocks,
R = A_L ... A_2 A_1, whose row i says how much of token i's final representation flows from each
input token. The map is the row of what the head reads, restricted to the patch tokens and
reshaped to the patch grid:

* class-token head (``global_pool='token'``): the class token's row;
* DeiT with a distillation token (``VisionTransformerDistilled``): its head averages the logits of
  the class and distillation tokens, so the map is the mean of their two rows;
* pooled head (``global_pool='avg'``, with or without a class token): the head averages the patch
  tokens' outputs (all tokens with ``pool_include_prefix``), so the map is the mean of those rows,
  i.e. the column mass the averaged representation draws from each patch.

Register tokens take part in the attention like any token; their columns are dropped from the map
with the class token's (they are prefix tokens, not image patches). Heads that read the tokens
otherwise (``max`` / ``avgmax`` pooling: a different token per channel; attention-pool ``map`` /
``prr`` heads) are NotApplicable, as is anything whose blocks are not timm's global ``Attention``
(CNNs; Swin and other windowed or rotary attentions: no single token-to-token matrix per block).

The attention is captured without modifying timm: a forward hook on each block's ``attn`` module
recomputes softmax(q k^T * scale) from the module's own ``qkv`` projection and q/k norms on the
input the module received (timm's fused SDPA path never materialises it). The hooks live for one
call and the classifier is never changed. Rollout ignores the target class (it is class-agnostic
by definition); one forward pass per image, no backward.
"""

from __future__ import annotations

import torch
from torch import nn

from salbench.classifiers import POOLED_TOKEN_HEADS, token_grid
from salbench.device import autocast
from salbench.errors import NotApplicable
from salbench.methods.base import Capabilities, SaliencyMethod, register_method


def rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    """Abnar & Zuidema's rollout of per-block attention, B x N x N.

    ``attentions``: one B x heads x N x N (or B x N x N, heads already fused) row-stochastic
    tensor per block, first block first. Each is head-averaged, given the residual identity and
    row-renormalised; the result is A_L ... A_1 (the later block multiplies on the left)."""
    out = None
    for att in attentions:
        a = att.float().mean(1) if att.ndim == 4 else att.float()
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(-1, keepdim=True)
        out = a if out is None else a @ out
    if out is None:
        raise ValueError("rollout of zero blocks")
    return out


def head_rows(model: nn.Module) -> tuple[str, list[int] | slice]:
    """Which token rows the head reads (see the module docstring); NotApplicable otherwise."""
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    pool = getattr(model, "global_pool", None)
    if getattr(model, "attn_pool", None) is not None:
        raise NotApplicable(f"attention rollout reads the rows of the tokens the head reads; this head pools with an attention layer (global_pool={pool!r})")
    if type(model).__name__ == "VisionTransformerDistilled":
        return "class and distillation tokens (the head averages their logits)", [0, 1]
    if pool == "token":
        if not getattr(model, "has_class_token", prefix > 0):
            raise NotApplicable("global_pool='token' without a class token: the head reads no single token")
        return "class token", [0]
    if pool == "avg":
        start = 0 if getattr(model, "pool_include_prefix", False) else prefix
        return "mean of the pooled tokens' rows (the head averages them)", slice(start, None)
    raise NotApplicable(f"attention rollout needs a head that reads the class token or averages the tokens; this one pools with {pool!r}"
                        + (" (a different token per channel)" if pool in POOLED_TOKEN_HEADS else ""))


def check_attention_model(model: nn.Module) -> None:
    """NotApplicable unless ``model`` is a timm VisionTransformer whose every block uses timm's global
    ``Attention`` (the module the hook knows how to read)."""
    from timm.layers import Attention
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        blocks = "windowed attention (Swin)" if hasattr(model, "layers") and "swin" in type(model).__name__.lower() else "no global self-attention blocks"
        raise NotApplicable(f"attention rollout needs a ViT/DeiT (timm VisionTransformer); {type(model).__name__} has {blocks}")
    kinds = {type(getattr(b, "attn", None)).__name__ for b in model.blocks if not isinstance(getattr(b, "attn", None), Attention)}
    if kinds:
        raise NotApplicable(f"attention rollout reads timm's Attention modules; these blocks use {', '.join(sorted(kinds))}")
    head_rows(model)


def _attention_probs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T * scale) of a timm ``Attention`` on its input x (B x N x C), B x heads x N x N."""
    b, n, _ = x.shape
    qkv = module.qkv(x).reshape(b, n, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
    q, k = module.q_norm(qkv[0]), module.k_norm(qkv[1])
    return ((q.float() * module.scale) @ k.float().transpose(-2, -1)).softmax(-1)


def capture_attention(classifier, images: torch.Tensor) -> list[torch.Tensor]:
    """The softmax attention of every block for a batch, first block first (hooks removed after)."""
    model = classifier.model
    captured: list[torch.Tensor] = []

    def hook(module, args, kwargs, _out):
        if kwargs.get("attn_mask") is not None or kwargs.get("is_causal"):
            raise NotApplicable("attention rollout assumes unmasked self-attention; this forward passes an attention mask")
        captured.append(_attention_probs(module, args[0]))

    handles = [blk.attn.register_forward_hook(hook, with_kwargs=True) for blk in model.blocks]
    try:
        with torch.no_grad(), autocast(classifier.device, classifier.amp_dtype):
            model.forward_features(classifier.normalize(images))
    finally:
        for h in handles:
            h.remove()
    return captured


def rollout_maps(classifier, images: torch.Tensor) -> torch.Tensor:
    """Raw rollout maps at the patch grid, B x gh x gw (rows of what the head reads, patch columns)."""
    model = classifier.model
    check_attention_model(model)
    _, rows = head_rows(model)
    r = rollout(capture_attention(classifier, images))
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    grid = token_grid(model, r.shape[-1] - prefix)
    if grid is None:
        raise NotApplicable(f"{classifier.name}: cannot reshape {r.shape[-1] - prefix} tokens to a patch grid")
    return r[:, rows, prefix:].mean(1).reshape(len(images), *grid)


@register_method("attention_rollout")
class AttentionRollout(SaliencyMethod):
    """Abnar & Zuidema 2020 (see the module docstring).

    Min-max normalised: the residual identity keeps half of every row of every A_l on the
    diagonal, so each patch holds a floor of rollout mass that says nothing about where the
    evidence is (on a random-weight ViT the map spans 0.99-1.0 of its maximum). On zoo:vit (64
    synthetic val images) the share of the map inside the object mask is 59% min-max vs 48% max.
    """

    normalization = "minmax"
    capabilities = Capabilities(needs_gradients=False, classifier_dependent=True, family="attention")
    description = "attention rollout (Abnar & Zuidema): head-averaged attention + identity, multiplied through the blocks (ViT/DeiT only)"

    def cost(self):
        return (1.0, 0.0)

    def check(self, classifier):
        check_attention_model(classifier.model)

    def attribute(self, classifier, images, targets, seeds):
        return rollout_maps(classifier, images)
