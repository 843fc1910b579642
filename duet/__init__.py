"""duet: remote data science on private data, as a peer-to-peer notebook session over WebRTC.

The owner runs ``d = duet.launch_duet()`` and shares the session ID it prints; the scientist runs
``d = duet.join_duet("duet-…")``. See docs/api.md.

The errors are imported at once; the names that need torch (``Duet``, ``launch_duet``, ``Module`` …) on
first use, so that ``duet.signaling.server`` (a team's signaling host) starts without torch or pandas.
"""

import importlib as _importlib
import typing as _typing

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

if _typing.TYPE_CHECKING:
    from .launch import join_duet, launch_duet
    from .remote.client import RemoteWarning
    from .remote.module import Module
    from .remote.store import Quotas
    from .session import Duet

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

_LAZY = {  # public name -> the module that defines it (imported on first access)
    "Duet": ".session",
    "join_duet": ".launch",
    "launch_duet": ".launch",
    "Module": ".remote.module",
    "Quotas": ".remote.store",
    "RemoteWarning": ".remote.client",
}


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'duet' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
