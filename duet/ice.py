"""ICE on hosts with no network: offer a loopback host candidate where aioice would offer none.

aioice gathers host candidates from every interface address except 127.0.0.1 and ::1. On a laptop that is
offline (or in a loopback-only network namespace) that leaves no candidate at all, and aiortc waits for a
connection that can never form. :func:`install` wraps aioice's address lookup once per process: when the
real lookup finds no usable address, it returns ``127.0.0.1`` instead, so two notebooks on that machine can
still reach each other. On any host with a real interface the lookup's result is unchanged.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

import aioice.ice

__all__ = ["install", "host_addresses"]

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
