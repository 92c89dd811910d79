"""Metrics tests run on the CPU, and also on CUDA / MPS when present (the code is device-agnostic)."""

import pytest
import torch

DEVICES = ["cpu"]
if torch.cuda.is_available():
    DEVICES.append("cuda")
if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
    DEVICES.append("mps")


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)
