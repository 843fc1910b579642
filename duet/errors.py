"""The exception tree: every error duet raises derives from DuetError.

    DuetError
    ├── SignalingError        pairing through the signaling server failed (wrong, used or expired ID, server down)
    ├── ConnectionError       the peer connection failed or was lost
    ├── ProtocolError         a peer sent bytes that are not a valid duet frame or message
    ├── PermissionDenied      a call or value access the owner's rules refuse
    ├── RequestDenied         a request was denied by the owner or a handler
    ├── RequestTimeout        a request was not decided in time, or a reply did not come in time
    ├── RemoteError           an error raised on the owner's side while running a call
    └── QuotaExceeded         a call would exceed one of the session's quotas

aiortc, aiohttp and asyncio errors are translated into these at the boundary (``raise X(...) from exc``).
"""

from __future__ import annotations

__all__ = [
    "DuetError",
    "SignalingError",
    "ConnectionError",
    "ProtocolError",
    "PermissionDenied",
    "RequestDenied",
    "RequestTimeout",
    "RemoteError",
    "QuotaExceeded",
]


class DuetError(Exception):
    """Root of every error duet raises."""


class SignalingError(DuetError):
    """Pairing through the signaling server failed."""


class ConnectionError(DuetError):  # noqa: A001 - the public name API.md asks for
    """The peer connection failed, was closed, or was lost."""


class ProtocolError(DuetError):
    """A peer sent bytes that are not a valid duet frame or message."""


class PermissionDenied(DuetError):
    """The owner's rules refuse this call or access."""


class RequestDenied(DuetError):
    """A request for a value was denied."""


class RequestTimeout(DuetError):
    """A request was not decided in time, or a reply did not arrive in time."""


class RemoteError(DuetError):
    """An error raised on the owner's side while running a call.

    ``remote_type`` is the remote exception's type name; ``remote_message`` its message (empty when the
    owner has set error detail to type only).
    """

    def __init__(self, remote_type: str, remote_message: str = "") -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        text = f"{remote_type}: {remote_message}" if remote_message else remote_type
        super().__init__(text)


class QuotaExceeded(DuetError):
    """A call would exceed one of the session's quotas."""
