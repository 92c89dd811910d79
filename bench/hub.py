"""Fail fast when pretrained weights must come from an unreachable Hugging Face hub.

Without a network, ``huggingface_hub`` retries every request with back-off (about a minute per
missing classifier) before it gives up. One connection probe with a short timeout decides
instead: when the hub cannot be reached, the download runs in the library's offline mode, so
weights in the local cache still load and missing ones fail at once.
"""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

#: Seconds the connectivity probe waits for the hub.
PROBE_TIMEOUT_S = 3.0


@functools.lru_cache(maxsize=None)
def hub_reachable(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub endpoint opens within ``timeout`` (cached per process)."""
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def offline_unless_reachable() -> Iterator[bool]:
    """Within the block, hub downloads are offline when ``HF_HUB_OFFLINE`` is set or the hub is
    unreachable; yields whether they are."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        yield True
        return
    if hub_reachable(constants.ENDPOINT):
        yield False
        return
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield True
    finally:
        constants.HF_HUB_OFFLINE = previous
