"""ICE on hosts with no network: offer a loopback host candidate where aioice would offer none.

aioice gathers host candidates from every interface address except 127.0.0.1 and ::1. On a laptop that is
offline (or in a loopback-only network namespace) that leaves no candidate at all, and aiortc waits for a
connection that can never form. :func:`install` wraps aioice's address lookup once per process: when the
real lookup finds no usable address, it returns ``127.0.0.1`` instead, so two notebooks on that machine can
still reach each other. On any host with a real interface the lookup's result is unchanged.

:func:`widen_buffers` gives the UDP socket a connection settled on larger kernel buffers. aioice asks for
256 KB of receive buffer; a bulk transfer keeps up to aiortc's 1 MB receive window in flight, and on a busy
machine a receiver whose loop is late overflows 256 KB: each dropped datagram that fast retransmit does not
repair costs an SCTP T3 timeout, at least 1 s in aiortc. The kernel caps the size at ``net.core.rmem_max``
/ ``wmem_max`` (4 MB on most distributions).
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import aioice
import aioice.ice

__all__ = ["install", "host_addresses", "widen_buffers", "SOCKET_BUFFER"]

log = logging.getLogger("duet.ice")

SOCKET_BUFFER = 4 << 20  # bytes asked for each way; the kernel may grant less (rmem_max / wmem_max)
_TESTED_AIOICE = ((0, 9), (0, 13))  # the releases whose Connection keeps ``_nominated`` pairs as used here

_lock = threading.Lock()
_installed = False
_original: Callable[..., list[str]] | None = None


def host_addresses(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
    """The addresses aioice will gather host candidates on (after :func:`install`)."""
    return aioice.ice.get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)


def install() -> None:
    """Install the loopback fallback (idempotent). Refuses quietly if aioice changed shape."""
    global _installed, _original
    with _lock:
        if _installed:
            return
        original = getattr(aioice.ice, "get_host_addresses", None)
        if original is None or not callable(original):
            return  # aioice no longer has the hook we rely on; leave it alone

        @functools.wraps(original)
        def with_loopback_fallback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
            addresses = original(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
            if not addresses and use_ipv4:
                return ["127.0.0.1"]
            return addresses

        with_loopback_fallback.__duet_fallback__ = True  # type: ignore[attr-defined]
        _original = original
        aioice.ice.get_host_addresses = with_loopback_fallback
        _installed = True


def _aioice_version() -> tuple[int, int] | None:
    try:
        major, minor = (int(x) for x in str(aioice.__version__).split(".")[:2])
    except (AttributeError, ValueError):
        return None
    return major, minor


def _nominated_sockets(pc: Any) -> list[Any]:
    """The UDP sockets of the candidate pairs ICE settled on, or [] if aiortc/aioice changed shape."""
    version = _aioice_version()
    if version is None or not _TESTED_AIOICE[0] <= version <= _TESTED_AIOICE[1]:
        return []
    try:
        connection = pc.sctp.transport.transport._connection
        pairs = list(connection._nominated.values())
    except AttributeError:
        return []
    sockets = []
    for pair in pairs:
        transport = getattr(getattr(pair, "protocol", None), "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None and sock.type == socket.SOCK_DGRAM:  # a TURN relay over TCP is left alone
            sockets.append(sock)
    return sockets


def widen_buffers(pc: Any, size: int = SOCKET_BUFFER) -> list[tuple[int, int]]:
    """(loop thread, once connected) Ask for ``size``-byte receive and send buffers on the connection's UDP
    sockets; never shrinks one. Returns (receive, send) buffer sizes as the kernel reports them after, one
    pair per socket ([] if there is nothing this aioice version lets us reach)."""
    sizes = []
    for sock in _nominated_sockets(pc):
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                if sock.getsockopt(socket.SOL_SOCKET, option) < size:
                    sock.setsockopt(socket.SOL_SOCKET, option, size)
            except OSError as exc:
                log.debug("could not widen a socket buffer: %s", exc)
        sizes.append(
            (
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
            )
        )
    return sizes
