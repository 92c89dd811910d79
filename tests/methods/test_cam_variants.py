"""The CAM variants beyond the peer comparison: Swin features, the HiResCAM/class-token-ViT identity,
Eigen-CAM's sign rule and class independence, Score-CAM's chunking."""

from __future__ import annotations

import pytest
import torch

from salbench.errors import NotApplicable
from salbench.methods import create_method
from salbench.methods.cam import features_and_gradients

CAMS = ["gradcam", "gradcam_pp", "xgradcam", "hirescam", "layercam", "scorecam", "eigencam"]


@pytest.fixture(scope="module")
def swin():
    from testutils import make_classifier

    return make_classifier("swin_tiny_patch4_window7_224", size=64, img_size=64, window_size=4, embed_dim=16,
                           depths=(1, 1, 1), num_heads=(1, 1, 1))


@pytest.mark.parametrize("name", CAMS)
def test_every_variant_runs_on_swin_nhwc_features(swin, name):
    assert swin.features_spec().kind == "nhwc"
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    m = create_method(name)
    m.check(swin)
    maps = m(swin, x, torch.tensor([1, 2]))
    assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all() and maps.min() >= 0
    assert torch.allclose(maps.flatten(1).amax(1), torch.ones(2))


def test_hirescam_is_identically_zero_on_a_class_token_vit_hence_not_applicable():
    """The last block's input reaches the class token only through LayerNorm, invariant to scaling a
    token: sum_k G_k A_k = d/ds S(s A)|_{s=1} = 0 per position (rounding aside)."""
    from testutils import make_classifier

    vit = make_classifier("test_vit", img_size=32, patch_size=8)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.enable_grad():
        feats, grads = features_and_gradients(vit, x, torch.tensor([0, 1, 2]))
    assert (grads * feats).sum(1).abs().max() <= 1e-4 * (grads * feats).abs().sum(1).max()
    with pytest.raises(NotApplicable, match="identically zero"):
        create_method("hirescam").check(vit)
    pooled = make_classifier("test_vit", img_size=32, patch_size=8, class_token=False, global_pool="avg")
    create_method("hirescam").check(pooled)  # the zoo's pooled ViT reads its patch tokens directly


def test_eigencam_is_class_independent_with_the_strongest_response_positive():
    from testutils import make_classifier

    cnn = make_classifier("test_resnet")
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    m = create_method("eigencam")
    assert torch.equal(m(cnn, x, torch.tensor([0, 1, 2, 3])), m(cnn, x, torch.tensor([9, 8, 7, 6])))
    _, feats = cnn.forward_with_features(x)
    a = feats.detach().flatten(2).transpose(1, 2)
    a = a - a.mean(1, keepdim=True)
    proj = torch.linalg.svd(a, full_matrices=False)[0][:, :, 0] * torch.linalg.svd(a, full_matrices=False)[1][:, :1]
    proj = torch.where((proj.amin(1).abs() > proj.amax(1).abs())[:, None], -proj, proj)  # the documented sign
    with torch.no_grad():
        raw = m.attribute(cnn, x, None, None)
    assert torch.allclose(raw.flatten(1), proj.clamp_min(0), atol=1e-5)


def test_scorecam_does_not_depend_on_its_chunk():
    from testutils import make_classifier

    cnn = make_classifier("test_resnet")
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 5, 9])
    a = create_method("scorecam", chunk=7)(cnn, x, t)
    b = create_method("scorecam", chunk=1000)(cnn, x, t)
    assert (a - b).abs().max() <= 1e-5
