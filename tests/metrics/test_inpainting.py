import pytest
import torch

from salbench.errors import UsageError
from salbench.metrics.inpainting import ALL_REMOVED_FILL, INPAINTERS, inpaint

BACKENDS = ["telea", "biharmonic", "pushpull"]


def _constant_scene(device, h=24, w=20):
    x = torch.empty(3, 3, h, w)
    x[:, 0], x[:, 1], x[:, 2] = 0.8, 0.3, 0.1
    remove = torch.zeros(3, h, w, dtype=torch.bool)
    remove[0, 8:16, 6:14] = True  # a hole in the middle
    remove[1, 0:5, 0:20] = True  # a band along the top edge
    # image 2: nothing removed
    x = x * (~remove)[:, None]  # removed pixels are 0, as in masked_out
    return x.to(device), remove.to(device)


def test_registered():
    assert INPAINTERS.names() == sorted(BACKENDS)
    with pytest.raises(UsageError, match="telea"):
        inpaint(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool), "telia")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fills_removed_pixels_with_the_surrounding_colour(device, backend):
    x, remove = _constant_scene(device)
    out = inpaint(x, remove, backend)
    assert out.shape == x.shape and out.dtype == torch.float32 and out.device.type == device.type
    colour = torch.tensor([0.8, 0.3, 0.1], device=device)
    for i in range(2):
        filled = out[i][:, remove[i]]  # 3 x n
        assert (filled > 0).all()
        assert (filled - colour[:, None]).abs().max() < 0.02  # Telea works on uint8: a few 1/255 steps
    keep = ~remove[:, None].expand_as(x)
    assert torch.equal(out[keep], x[keep])  # kept pixels exactly unchanged


@pytest.mark.parametrize("backend", BACKENDS)
def test_nothing_removed_is_identity(device, backend):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 9, 7, generator=g).to(device)
    out = inpaint(x, torch.zeros(2, 9, 7, dtype=torch.bool, device=device), backend)
    assert torch.equal(out, x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_everything_removed_is_mid_grey(device, backend):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 6, 6, generator=g).to(device)
    remove = torch.zeros(2, 6, 6, dtype=torch.bool, device=device)
    remove[0] = True
    remove[1, 2:4, 2:4] = True
    out = inpaint(x * (~remove)[:, None], remove, backend)
    assert (out[0] == ALL_REMOVED_FILL).all()
    assert not (out[1] == ALL_REMOVED_FILL).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fill_follows_a_gradient(device, backend):
    # left half dark, right half bright; a hole straddling the edge gets both, not one flat value
    x = torch.zeros(1, 3, 16, 16)
    x[..., 8:] = 1.0
    remove = torch.zeros(1, 16, 16, dtype=torch.bool)
    remove[0, 5:11, 4:12] = True
    out = inpaint((x * (~remove)[:, None]).to(device), remove.to(device), backend).cpu()
    assert float(out[0, 0, 8, 4]) < 0.5 < float(out[0, 0, 8, 11])


def test_other_input_dtype_comes_back_float32():
    x = torch.full((1, 3, 8, 8), 0.5, dtype=torch.float64)
    remove = torch.zeros(1, 8, 8, dtype=torch.bool)
    remove[0, 3:5, 3:5] = True
    assert inpaint(x, remove).dtype == torch.float32


def test_shape_errors():
    with pytest.raises(ValueError):
        inpaint(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError):
        inpaint(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool))
