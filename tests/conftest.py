"""Shared fixtures: small random-weight timm classifiers (a CNN and a ViT) at 32x32."""

from __future__ import annotations

import os

import pytest
import torch

from testutils import CLASSIFIER_ARCHS, make_classifier

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", params=sorted(CLASSIFIER_ARCHS))
def classifier(request):
    arch, kw = CLASSIFIER_ARCHS[request.param]
    return make_classifier(arch, **kw)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Tests never touch the user's cache: $SALBENCH_HOME is a per-session temp dir."""
    if "SALBENCH_TEST_HOME" not in os.environ:
        os.environ["SALBENCH_TEST_HOME"] = str(tmp_path_factory.mktemp("salbench_home"))
    monkeypatch.setenv("SALBENCH_HOME", os.environ["SALBENCH_TEST_HOME"])
