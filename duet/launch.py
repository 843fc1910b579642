"""launch_duet and join_duet: build one side's Duet, pair it through the signaling server, say what to paste."""

from __future__ import annotations

import os
from typing import Any

from . import connect, loop, tuning
from .errors import RequestTimeout, SignalingError
from .session import Duet
from .signaling import codes
from .startup import HEALTH_TIMEOUT, check_allowlist, loopback_file, scientist_line, signaling_timeout
from .startup import signaling_url as _signaling_url

__all__ = ["launch_duet", "join_duet"]


def launch_duet(
    *,
    signaling_url: str | None = None,
    loopback: bool = False,
    ice_servers: connect.IceServers = None,
    timeout: float | None = None,
    name: str = "owner",
    quiet: bool = False,
    approve_join: bool = False,
    db_path: str | os.PathLike[str] | None = None,
    quotas: Any = None,
    allowlist: Any = None,
) -> Duet:
    """Owner: start a session and return at once; prints the session ID to share."""
    url = _signaling_url(signaling_url)
    session_id = codes.new_session_id()
    d = Duet(
        "owner",
        session_id,
        name=name,
        signaling_url=url,
        timeout=timeout,
        approve_join=approve_join,
        db_path=db_path,
        quotas=quotas,
        allowlist=allowlist,
    )
    # each signaling call is bounded by the client's own timeout; this outer bound only catches a hang elsewhere
    bound = HEALTH_TIMEOUT + signaling_timeout(timeout) + 15.0
    try:
        loop.run(d._start_owner(ice_servers), timeout=bound)
    except BaseException as exc:
        d._set_status("closed")
        assert d._owner is not None
        d._owner.close()
        if isinstance(exc, RequestTimeout):
            raise SignalingError(
                f"starting the session did not finish within {bound:g} s: the signaling server at {url} "
                "or the ICE servers did not answer"
            ) from exc
        raise
    assert d._owner is not None
    d._allowlist_check = check_allowlist(d._owner.executor.allowlist, quiet=quiet)
    if loopback:
        path = loopback_file()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(session_id)
        os.chmod(tmp, 0o600)
        tmp.replace(path)
    if not quiet:
        print(f"duet: session {session_id} is waiting for a scientist.")
        print(f"duet: in the scientist's notebook run:  {scientist_line(session_id, url, loopback)}")
    return d


def join_duet(
    session_id: str | None = None,
    *,
    signaling_url: str | None = None,
    loopback: bool = False,
    ice_servers: connect.IceServers = None,
    timeout: float = 30.0,
    name: str = "scientist",
) -> Duet:
    """Scientist: join the owner's session; blocks until the data channel is open."""
    if session_id is None:
        if not loopback:
            raise SignalingError(
                "join_duet needs the owner's session ID (or loopback=True on the same machine)"
            )
        try:
            session_id = loopback_file().read_text().strip()
        except OSError as exc:
            raise SignalingError(
                "no loopback session found: run duet.launch_duet(loopback=True) in the owner's notebook first"
            ) from exc
    session_id = codes.normalize_session_id(session_id)
    d = Duet("scientist", session_id, name=name, signaling_url=_signaling_url(signaling_url), timeout=timeout)
    try:
        loop.run(d._start_scientist(ice_servers))  # bounded inside: connection timeout, then join approval
    except BaseException:
        d._set_status("closed")
        raise
    tuning.freeze_long_lived()  # once per process: see duet.tuning
    return d
