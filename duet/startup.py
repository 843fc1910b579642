"""Before a peer arrives: the signaling URL, the embedded server, the loopback file, the start-up report."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import SignalingError
from .signaling.client import SignalingClient

__all__ = [
    "DEFAULT_SIGNALING_URL",
    "SIGNALING_TIMEOUT",
    "AnnouncingClient",
    "signaling_url",
    "signaling_timeout",
    "loopback_file",
    "ensure_server",
    "scientist_line",
    "check_allowlist",
]

log = logging.getLogger("duet.session")

DEFAULT_SIGNALING_URL = "http://127.0.0.1:8765"
SIGNALING_TIMEOUT = 30.0  # the longest one signaling call may take (a session's own timeout may be shorter)
HEALTH_TIMEOUT = 3.0  # SignalingClient.healthy() asks at most this long
_embedded: dict[tuple[str, int], Any] = {}


def signaling_url(url: str | None) -> str:
    return (url or os.environ.get("DUET_SIGNALING_URL") or DEFAULT_SIGNALING_URL).rstrip("/")


def signaling_timeout(timeout: float | None) -> float:
    """How long one signaling call may take: the session's timeout, at most :data:`SIGNALING_TIMEOUT`."""
    return SIGNALING_TIMEOUT if timeout is None or timeout <= 0 else min(float(timeout), SIGNALING_TIMEOUT)


def loopback_file() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"duet-{uid}" / "loopback-session"


def scientist_line(session_id: str, url: str, loopback: bool) -> str:
    """The call the scientist pastes; it names the signaling URL whenever that is not the default."""
    args = f'"{session_id}"' if not loopback else "loopback=True"
    if url != DEFAULT_SIGNALING_URL:
        args += f', signaling_url="{url}"'
    return f"d = duet.join_duet({args})"


class AnnouncingClient(SignalingClient):
    """The owner's signaling client: calls ``on_answer`` the moment the scientist's answer arrives, before
    it is applied and ICE runs (so the owner's status reads ``connecting`` meanwhile)."""

    def __init__(self, base_url: str, *, timeout: float, on_answer: Callable[[], None]) -> None:
        super().__init__(base_url, timeout=timeout)
        self._on_answer = on_answer

    async def wait_answer(self, key: str, *, timeout: float | None) -> str:
        token = await super().wait_answer(key, timeout=timeout)
        self._on_answer()
        return token


async def ensure_server(client: SignalingClient, url: str) -> None:
    """Start the embedded signaling server when the URL is on loopback and nothing answers there."""
    if await client.healthy():
        return
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SignalingError(
            f"no signaling server answers at {url}: start one with `duet-signaling --host 0.0.0.0 "
            f"--port {port}` on that machine, or check DUET_SIGNALING_URL"
        )
    from .signaling.server import start_server

    try:
        runner, _ = await start_server(host="127.0.0.1" if host == "localhost" else host, port=port)
    except OSError as exc:
        raise SignalingError(
            f"nothing answers as a duet signaling server at {url} and its port is taken ({exc.strerror}): "
            "pass signaling_url= or set DUET_SIGNALING_URL to a free port"
        ) from exc
    _embedded[(host, port)] = runner
    log.info("started the embedded signaling server on %s", url)


def check_allowlist(allowlist: Any, *, quiet: bool) -> concurrent.futures.Future[list[str]]:
    """Report, once and without failing, the allowlist entries the installed torch lacks (a warning in the
    log, one printed line). It runs in a thread of its own: the first check builds a sample optimizer,
    which imports torch._dynamo (~2 s), and launch_duet returns at once. The future gives the entries."""
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="duet-allowlist")
    try:
        return pool.submit(_report_missing, allowlist, quiet)
    finally:
        pool.shutdown(wait=False)  # the thread ends after the check; the interpreter waits for it at exit


def _report_missing(allowlist: Any, quiet: bool) -> list[str]:
    import torch

    try:
        missing = list(allowlist.missing())
    except Exception:  # noqa: BLE001 - a report, never a reason for the session to fail
        log.exception("the start-up allowlist check failed")
        return []
    if missing:
        shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        log.warning(
            "allowlist entries missing from torch %s (refused if called): %s", torch.__version__, shown
        )
        if not quiet:
            print(
                f"duet: torch {torch.__version__} lacks {len(missing)} allowlist entries (refused): {shown}"
            )
    return missing
