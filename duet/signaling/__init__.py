"""Signaling: session IDs and sealed tokens (codes), the client both peers use, and the aiohttp server."""

from __future__ import annotations

from .client import SignalingClient
from .codes import lookup_key, new_session_id, normalize_session_id, seal, sealing_key, unseal
from .server import app, main, start_server

__all__ = [
    "SignalingClient",
    "app",
    "lookup_key",
    "main",
    "new_session_id",
    "normalize_session_id",
    "seal",
    "sealing_key",
    "start_server",
    "unseal",
]
