"""What the owner's replies mean on the scientist's side: an error header as a duet error, a request's
answer onto its handle (and, for ``get``, the value, a raise or a warning)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from .. import codec
from ..errors import (
    DuetError,
    PermissionDenied,
    ProtocolError,
    QuotaExceeded,
    RemoteError,
    RequestDenied,
    RequestTimeout,
)

if TYPE_CHECKING:
    from ..transport import Message
    from .handle import RequestHandle

__all__ = ["raise_remote", "settle"]

_ERRORS: dict[str, type[DuetError]] = {
    "PermissionDenied": PermissionDenied,
    "QuotaExceeded": QuotaExceeded,
    "ProtocolError": ProtocolError,
    "RequestDenied": RequestDenied,
    "RequestTimeout": RequestTimeout,
}


def raise_remote(header: dict[str, Any]) -> None:
    """Raise the error a reply carries, as the duet class it names, else as RemoteError."""
    kind, message = str(header.get("kind", "RemoteError")), str(header.get("message", ""))
    cls = _ERRORS.get(kind)
    if cls is not None:
        raise cls(message)
    raise RemoteError(kind, message)


def settle(
    handle: RequestHandle, reply: Message, *, strict: bool, blocking: bool = True, warn: bool = True
) -> Any:
    """The reply to a request, onto its handle; for ``get``, the value (or a raise or warning).

    Called by ``Remote.get`` (itself called by ``Pointer.get``): a warning names the user's line.
    """
    h = reply.header
    if h.get("t") == "error":
        try:
            raise_remote(h)
        except DuetError as exc:
            handle._settle("failed", error=exc)
            raise
    status = h.get("status")
    if status == "accepted":
        value = codec.decode(h.get("v"), reply.buffers)
        handle._settle("accepted", value)
        return value
    reason = str(h.get("reason", ""))[:500]
    if status == "denied":
        handle._settle("denied", reason=reason)
        if not blocking:
            raise PermissionDenied(
                f"no grant for this value{': ' + reason if reason else ''}: "
                "call .get(request_block=True, ...) to ask the owner"
            )
        if strict:
            raise RequestDenied(f"request {handle.name!r} was denied{': ' + reason if reason else ''}")
        if warn:
            warnings.warn(
                f"request {handle.name!r} was denied{': ' + reason if reason else ''}", stacklevel=4
            )
        return None
    if status == "expired":
        handle._settle("expired", reason=reason)
        if strict:
            raise RequestTimeout(f"request {handle.name!r} was not decided in time")
        if warn:
            warnings.warn(f"request {handle.name!r} was not decided in time (expired)", stacklevel=4)
        return None
    raise ProtocolError(f"unexpected request status {status!r}")
