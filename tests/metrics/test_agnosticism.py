import math

import pytest
import torch
import torch.nn.functional as F

from salbench.errors import UsageError
from salbench.metrics.agnosticism import VARIANTS, classification_scores, compose


def _scene(device):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 3, 8, 8, generator=g) * 0.8 + 0.1).to(device)
    b = torch.zeros(2, 8, 8, dtype=torch.bool, device=device)
    b[0, 2:5, 3:6] = True
    b[1, :, :4] = True
    return x, b


def test_variants():
    assert VARIANTS == ("original", "masked_in", "masked_out", "inpainted")


def test_compose_masking(device):
    x, b = _scene(device)
    assert torch.equal(compose(x, b, "original"), x)
    mi = compose(x, b, "masked_in")
    mo = compose(x, b, "masked_out")
    keep = b[:, None].expand_as(x)
    assert torch.equal(mi[keep], x[keep]) and (mi[~keep] == 0).all()
    assert torch.equal(mo[~keep], x[~keep]) and (mo[keep] == 0).all()
    assert torch.equal(mi + mo, x)
    # a 0/1 float mask means the same as the bool mask
    assert torch.equal(compose(x, b.float(), "masked_out"), mo)


@pytest.mark.parametrize("backend", ["telea", "pushpull"])
def test_compose_inpainted_fills_the_mask_region(device, backend):
    x, b = _scene(device)
    x = torch.full_like(x, 0.6)
    ip = compose(x, b, "inpainted", inpaint=backend)
    keep = b[:, None].expand_as(x)
    assert ip.shape == x.shape and ip.device.type == device.type
    assert torch.equal(ip[~keep], x[~keep])  # kept pixels untouched
    assert (ip[keep] - 0.6).abs().max() < 0.02  # removed region filled from the surroundings


def test_compose_unknown_variant():
    x, b = _scene("cpu")
    with pytest.raises(UsageError, match="masked_in"):
        compose(x, b, "masked-in")


def test_classification_scores_hand_computed(device):
    logits = torch.tensor(
        [
            [3.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0],  # label 0: top-1
            [3.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0],  # label 1: top-5 only
            [3.0, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2],  # label 6: outside the top-5
            [0.0] * 7,  # uniform
        ],
        device=device,
    )
    labels = torch.tensor([0, 1, 6, 4], device=device)
    s = classification_scores(logits, labels)
    assert set(s) == {"top1", "top5", "ce", "entropy"}
    assert s["top1"].cpu().tolist() == [1.0, 0.0, 0.0, 0.0]  # uniform: argmax is class 0
    assert s["top5"].cpu().tolist()[:3] == [1.0, 1.0, 0.0]
    logp = F.log_softmax(logits.cpu(), dim=1)
    torch.testing.assert_close(s["ce"].cpu(), -logp[torch.arange(4), labels.cpu()])
    assert float(s["ce"][3]) == pytest.approx(math.log(7))
    assert float(s["entropy"][3]) == pytest.approx(math.log(7))
    p = logp.exp()
    torch.testing.assert_close(s["entropy"].cpu(), -(p * logp).sum(1))
    assert all(v.dtype == torch.float32 and v.shape == (4,) for v in s.values())


def test_classification_scores_few_classes_and_low_precision(device):
    logits = torch.tensor([[0.1, 2.0, -1.0], [5.0, 0.0, 0.0]], device=device, dtype=torch.bfloat16)
    s = classification_scores(logits, torch.tensor([2, 1], device=device))
    assert s["top1"].cpu().tolist() == [0.0, 0.0]
    assert s["top5"].cpu().tolist() == [1.0, 1.0]  # top-min(5, C) = top-3: always right
    assert s["ce"].dtype == torch.float32


def test_entropy_with_masked_classes_is_finite(device):
    logits = torch.tensor([[0.0, 0.0, float("-inf")]], device=device)
    s = classification_scores(logits, torch.tensor([0], device=device))
    assert float(s["entropy"][0]) == pytest.approx(math.log(2))
