"""duet: remote data science on private data, as a peer-to-peer notebook session over WebRTC.

The owner runs ``d = duet.launch_duet()`` and shares the session ID it prints; the scientist runs
``d = duet.join_duet("duet-…")``. See docs/api.md.
"""

from .errors import (
    ConnectionError,
    DuetError,
    PermissionDenied,
    ProtocolError,
    QuotaExceeded,
    RemoteError,
    RequestDenied,
    RequestTimeout,
    SignalingError,
)
from .remote.client import RemoteWarning
from .remote.module import Module
from .remote.store import Quotas
from .session import Duet, join_duet, launch_duet

__version__ = "0.1.0"

__all__ = [
    "ConnectionError",
    "Duet",
    "DuetError",
    "Module",
    "PermissionDenied",
    "ProtocolError",
    "Quotas",
    "QuotaExceeded",
    "RemoteError",
    "RemoteWarning",
    "RequestDenied",
    "RequestTimeout",
    "SignalingError",
    "join_duet",
    "launch_duet",
]
