"""Missing pretrained weights with no reachable hub fail at once, in one line (no minute of retries)."""

from __future__ import annotations

import time

import pytest

from salbench import hub
from salbench.errors import UsageError


def test_offline_mode_only_inside_the_block_when_unreachable(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hub_reachable", lambda endpoint: False)
    with hub.offline_unless_reachable() as offline:
        assert offline and constants.is_offline_mode()
    assert not constants.is_offline_mode()
    monkeypatch.setattr(hub, "hub_reachable", lambda endpoint: True)
    with hub.offline_unless_reachable() as offline:
        assert not offline and not constants.is_offline_mode()


def test_probe_of_a_closed_port_is_false():
    assert hub.hub_reachable("http://127.0.0.1:9", timeout=0.5) is False


def test_unreachable_hub_fails_fast_with_one_line(monkeypatch):
    from salbench.classifiers import load_classifier

    monkeypatch.setattr(hub, "hub_reachable", lambda endpoint: False)
    t0 = time.perf_counter()
    try:
        load_classifier("resnet18.a1_in1k")
    except UsageError as exc:
        msg = str(exc)
    else:
        pytest.skip("resnet18.a1_in1k is in the local Hugging Face cache")
    assert time.perf_counter() - t0 < 15
    assert "'resnet18.a1_in1k'" in msg and "offline or unreachable" in msg and "\n" not in msg
