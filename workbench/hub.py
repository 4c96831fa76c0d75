"""Is the Hugging Face hub reachable? Asked before any download so offline machines fail in seconds, not minutes."""

from __future__ import annotations

import os
import socket

HUB_HOST = "huggingface.co"
PROBE_TIMEOUT_S = 3.0  # how long to wait for a TCP connection before declaring the hub unreachable


def hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return False
    try:
        socket.create_connection((HUB_HOST, 443), timeout=PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False
