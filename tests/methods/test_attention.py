"""Attention rollout pinned to Abnar & Zuidema's definition: hand-computed rollouts, the rows each
head reads, attention captured without touching the classifier, and a peer where installed."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

from salbench.errors import NotApplicable
from salbench.methods import create_method
from salbench.methods.attention import capture_attention, check_attention_model, head_rows, rollout, rollout_maps
from testutils import make_classifier

VIT = {"img_size": 32, "patch_size": 8}


def test_hand_built_two_block_rollout():
    """Block 1 (two heads, averaged) and block 2 on [cls, p1, p2], worked out by hand:
    A1 = ((H1 + H2)/2 + I) / 2 = [[.75 .25 0] [0 1 0] [0 0 1]],
    A2 = (W + I) / 2           = [[.5 0 .5] [0 1 0] [.25 .25 .5]],
    R = A2 A1: class row [.375 .125 .5], last row [.1875 .3125 .5] (A1 A2 would give [.375 .25 .375])."""
    h1 = torch.eye(3)
    h2 = torch.tensor([[0.0, 1, 0], [0, 1, 0], [0, 0, 1]])
    w = torch.tensor([[0.0, 0, 1], [0, 1, 0], [0.5, 0.5, 0]])
    r = rollout([torch.stack([h1, h2])[None], w[None, None]])
    assert torch.allclose(r[0, 0], torch.tensor([0.375, 0.125, 0.5]))
    assert torch.allclose(r[0, 2], torch.tensor([0.1875, 0.3125, 0.5]))
    assert torch.allclose(r.sum(-1), torch.ones(1, 3)), "rows of a rollout stay stochastic"


def test_identity_attention():
    """Identity attention keeps every token to itself: the pooled head's map (mean of the patch
    rows) is uniform, and nothing flows from the patches into the class token (zero map)."""
    eye = torch.eye(5).expand(2, 3, 5, 5)
    r = rollout([eye, eye, eye])
    assert torch.equal(r, torch.eye(5).expand(2, 5, 5))
    pooled = r[:, 1:, 1:].mean(1)
    assert torch.allclose(pooled, torch.full((2, 4), 0.25))
    assert torch.equal(r[:, 0, 1:], torch.zeros(2, 4))


@pytest.mark.parametrize("kw", [{}, {"global_pool": "avg", "class_token": False}, {"reg_tokens": 2}])
def test_uniform_attention_gives_a_uniform_map(kw):
    """q = k = 0 makes every softmax row uniform; the rollout row of any head is then the same for
    every patch: a flat raw map (all zero after min-max normalisation)."""
    clf = make_classifier("test_vit", **VIT, **kw)
    for blk in clf.model.blocks:
        dim = blk.attn.head_dim * blk.attn.num_heads
        with torch.no_grad():
            blk.attn.qkv.weight[: 2 * dim].zero_()
            if blk.attn.qkv.bias is not None:
                blk.attn.qkv.bias[: 2 * dim].zero_()
    x = torch.rand(3, 3, 32, 32)
    raw = rollout_maps(clf, x)
    assert raw.shape == (3, 4, 4)
    assert (raw - raw.flatten(1)[:, :1, None]).abs().max() < 1e-6
    assert torch.equal(create_method("attention_rollout")(clf, x, torch.zeros(3, dtype=torch.long)), torch.zeros(3, 32, 32))


def _unfused_attention(clf, x):
    """Reference capture: a copy with timm's explicit softmax path, read at attn_drop's input."""
    model = copy.deepcopy(clf.model)
    seen = []
    for blk in model.blocks:
        blk.attn.fused_attn = False
        blk.attn.attn_drop.register_forward_hook(lambda _m, args, _o: seen.append(args[0]))
    with torch.no_grad():
        model.forward_features(clf.normalize(x))
    return seen


def test_capture_matches_timm_unfused_attention_and_leaves_the_model_alone():
    clf = make_classifier("test_vit", **VIT)
    fused = [blk.attn.fused_attn for blk in clf.model.blocks]
    x = torch.rand(2, 3, 32, 32)
    got = capture_attention(clf, x)
    ref = _unfused_attention(clf, x)
    assert len(got) == len(ref) == len(clf.model.blocks)
    for a, b in zip(got, ref):
        assert a.shape == b.shape and (a - b).abs().max() < 1e-5
    assert [blk.attn.fused_attn for blk in clf.model.blocks] == fused
    assert all(not blk.attn._forward_hooks for blk in clf.model.blocks), "hooks removed after the call"


def test_rows_read_per_head():
    """Class token: row 0; registers are prefix columns, dropped; pooled head: mean of patch rows;
    distilled DeiT: mean of the class and distillation rows."""
    x = torch.rand(2, 3, 32, 32)
    for kw, rows in (({"reg_tokens": 2}, [0]), ({"global_pool": "avg", "class_token": False}, slice(0, None))):
        clf = make_classifier("test_vit", **VIT, **kw)
        p = clf.model.num_prefix_tokens
        r = rollout(capture_attention(clf, x))
        assert torch.allclose(rollout_maps(clf, x), r[:, rows, p:].mean(1).view(2, 4, 4))
    deit = make_classifier("deit_tiny_distilled_patch16_224", **VIT, depth=2)
    assert head_rows(deit.model)[1] == [0, 1]
    r = rollout(capture_attention(deit, x))
    assert torch.allclose(rollout_maps(deit, x), r[:, :2, 2:].mean(1).view(2, 4, 4))


@pytest.mark.parametrize("arch, kw, reason", [
    ("test_resnet", {}, "no global self-attention"),
    ("swin_tiny_patch4_window7_224", {"img_size": 32, "window_size": 2, "embed_dim": 16, "depths": (1, 1), "num_heads": (1, 1)}, "windowed attention"),
    ("test_vit", {**VIT, "global_pool": "max", "class_token": False}, "'max'"),
])
def test_not_applicable_with_reason(arch, kw, reason):
    clf = make_classifier(arch, **kw)
    with pytest.raises(NotApplicable, match=reason):
        create_method("attention_rollout").check(clf)


def test_peer_fast_vit_rollout():
    """fast-vit-rollout (PyPI) hooks attn_drop on a model without fused attention; with mean head
    fusion and no discarding it computes the same rollout matrix."""
    peer = pytest.importorskip("fast_vit_rollout.vit_rollout")
    clf = make_classifier("test_vit", **VIT, reg_tokens=1)
    model = copy.deepcopy(clf.model)
    for blk in model.blocks:
        blk.attn.fused_attn = False
    x = torch.rand(3, 3, 32, 32)
    matrix = peer.ViTAttentionRollout(model, head_fusion="mean", discard_ratio=0.0)(clf.normalize(x))
    p = clf.model.num_prefix_tokens
    assert (matrix[:, 0, p:].reshape(3, 4, 4) - rollout_maps(clf, x)).abs().max() < 1e-6


def test_check_accepts_timm_vits():
    check_attention_model(timm.create_model("test_vit", **VIT))
