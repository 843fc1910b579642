"""The Duet object users hold: lifecycle, status, display, and the message dispatch table."""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import logging
import time
import warnings
from collections.abc import Callable
from typing import Any

from . import connect, loop
from .errors import ConnectionError, DuetError
from .identity import Identity
from .owner import OwnerService
from .remote.client import periodic_release, raise_remote
from .scientist import ScientistService, StoreView
from .signaling.client import SignalingClient
from .startup import (
    DEFAULT_SIGNALING_URL,
    AnnouncingClient,
    ensure_server,
    signaling_timeout,
)
from .transport import Channel, Message

__all__ = ["Duet", "DEFAULT_SIGNALING_URL"]

log = logging.getLogger("duet.session")

_GUARDED = ("echo", "error")  # owner: messages refused until the join is approved (like ops, meta …)


class _TrackedStore(StoreView):
    """The scientist's view of the owner's store, remembering how many objects the last listing had."""

    def __init__(self, remote: Any, on_listing: Callable[[int], None]) -> None:
        super().__init__(remote)
        self._on_listing = on_listing

    def _items(self) -> list[dict[str, Any]]:
        items = super()._items()
        self._on_listing(len(items))
        return items


class Duet:
    """One side of a session. Build it with :func:`launch_duet` (owner) or :func:`join_duet` (scientist)."""

    def __init__(
        self,
        role: str,
        session_id: str,
        *,
        name: str,
        signaling_url: str,
        timeout: float | None,
        **owner_options: Any,
    ) -> None:
        self.role = role
        self.session_id = session_id
        self.name = name
        self.signaling_url = signaling_url
        self.identity = Identity.load_or_create()
        self.peer: connect.PeerInfo | None = None
        self.connect_seconds: float | None = None
        self._timeout = timeout
        self._status = "waiting" if role == "owner" else "connecting"
        self._history = [self._status]  # every status it has had, in order
        self._error: BaseException | None = None
        self._channel: Channel | None = None
        self._client: SignalingClient = AnnouncingClient(
            signaling_url,
            timeout=signaling_timeout(timeout),
            on_answer=lambda: self._set_status("connecting"),
        )
        self._pending: connect.Pending | None = None
        self._waiter: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()  # set (in the loop) once connected or failed
        self._closing = False
        self._started = time.monotonic()
        self._on_close_callbacks: list[Callable[[str], None]] = []
        self.handlers: dict[str, Callable[[Message], Any]] = {"echo": self._on_echo, "error": self._on_error}
        self._store_size: int | None = None  # scientist: objects in the owner's store, as last listed
        self._allowlist_check: concurrent.futures.Future[list[str]] | None = None  # owner: start-up report
        self._owner: OwnerService | None = None
        self._scientist: ScientistService | None = None
        self._stop = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        if role == "owner":
            self._owner = OwnerService(requester=self._peer_label, **owner_options)
            self.handlers.update(self._owner.handlers())
            # nothing but "hello" is served before the owner approves the join (approve_join=True)
            self.handlers.update(
                {t: self._owner._guard(h) for t, h in self.handlers.items() if t in _GUARDED}
            )
        else:
            self._scientist = ScientistService(lambda: self.channel, self._peer_label)
            self._scientist.store = _TrackedStore(self._scientist.remote, self._listed)
            self.handlers.update(self._scientist.handlers())

    def _listed(self, count: int) -> None:
        self._store_size = count

    def _set_status(self, status: str) -> None:
        if status != self._status:
            log.debug("%s status %s -> %s", self.role, self._status, status)
            self._status = status
            self._history.append(status)

    def _peer_label(self) -> str:
        return f"{self.peer.name} ({self.peer.fingerprint})" if self.peer else "unknown"

    # ---- the role's parts ----------------------------------------------------------------------------

    @property
    def store(self) -> Any:
        """Owner: the Store (publish, remove, pandas). Scientist: the owner's published objects, as pointers."""
        return self._owner.store if self._owner else self._part("store")

    @property
    def requests(self) -> Any:
        """Owner: the request queue. Scientist: its own requests and their status."""
        return self._owner.requests if self._owner else self._part("requests")

    @property
    def log(self) -> Any:
        """Owner: every remote call the scientist ran (``d.log.pandas``)."""
        if self._owner is None:
            raise AttributeError("the activity log is the owner's")
        return self._owner.log

    @property
    def torch(self) -> Any:
        """Scientist: remote torch (``d.torch.nn.Linear(...)``)."""
        return self._part("torch")

    @property
    def python(self) -> Any:
        """Scientist: remote Python values (``d.python.Float(0)``)."""
        return self._part("python")

    def _part(self, name: str) -> Any:
        if self._scientist is None:
            raise AttributeError(f"d.{name} is on the scientist's side")
        return getattr(self._scientist, name)

    # ---- status and display ----------------------------------------------------------------------

    @property
    def status(self) -> str:
        """``waiting``, ``connecting``, ``connected`` or ``closed``."""
        return self._status

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint

    def _summary(self) -> dict[str, str]:
        peer = f"{self.peer.name} ({self.peer.fingerprint})" if self.peer else "-"
        return {"role": self.role, "peer": peer, "status": self.status, **self._extra_summary()}

    def _extra_summary(self) -> dict[str, str]:
        if self._owner is not None:
            return {
                "objects": str(len(self._owner.store)),
                "pending requests": str(len(self._owner.requests)),
            }
        assert self._scientist is not None
        pending = sum(1 for r in self._scientist.requests if r.status == "pending")
        size = "?" if self._store_size is None else str(self._store_size)
        return {"objects": size, "pending requests": str(pending)}

    def __repr__(self) -> str:
        return "<Duet " + " ".join(f"{k}={v}" for k, v in self._summary().items()) + ">"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
            for k, v in self._summary().items()
        )
        return f"<b>duet session</b><table>{rows}</table>"

    # ---- lifecycle ---------------------------------------------------------------------------------

    async def _start_owner(self, ice_servers: connect.IceServers) -> None:
        await ensure_server(self._client, self.signaling_url)
        self._pending = await connect.offer(
            self._client, self.session_id, self.identity, self.name, ice_servers
        )
        self._waiter = asyncio.ensure_future(self._owner_wait())

    async def _owner_wait(self) -> None:
        assert self._pending is not None
        try:
            peer = await connect.await_answer(self._client, self._pending, self._timeout)  # -> connecting
            self._attach(self._pending.pc, self._pending.dc, peer)
        except asyncio.CancelledError:
            await self._pending.pc.close()
            raise
        except Exception as exc:  # noqa: BLE001 - kept and raised by wait_for_peer
            self._error = exc
            self._set_status("closed")
            await self._pending.pc.close()
            self._connected.set()
            log.warning("no scientist connected: %s", exc)
        finally:
            await self._client.close()

    async def _start_scientist(self, ice_servers: connect.IceServers) -> None:
        try:
            pc, dc, peer = await connect.answer(
                self._client, self.session_id, self.identity, self.name, ice_servers, self._timeout or 30.0
            )
        finally:
            await self._client.close()
        self._attach(pc, dc, peer)
        # with approve_join a person decides: wait for them as long as the owner's queue would (10 min)
        try:
            reply = await self.channel.request({"t": "hello"}, timeout=max(self._timeout or 30.0, 600.0))
            if reply.header.get("t") != "welcome":
                raise_remote(reply.header)
        except BaseException:
            await self.channel.close("join refused or not approved in time")
            raise
        assert self._scientist is not None
        self._scientist.welcomed(reply.header)
        self._own(periodic_release(self._scientist.remote, self._stop))
        try:  # how many objects the owner has published, for repr(d) (d.store keeps it up to date)
            listing = await self.channel.request({"t": "store"}, timeout=10)
            items = listing.header.get("items")
            if isinstance(items, list):
                self._store_size = len(items)
        except DuetError as exc:
            log.info("no store listing from the owner: %s", exc)

    def _own(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _attach(self, pc: Any, dc: Any, peer: connect.PeerInfo) -> None:
        self.peer = peer
        self._channel = Channel(
            pc, dc, on_message=self._dispatch, on_close=self._on_channel_close, max_message=peer.max_message
        )
        self._channel.start()
        if self._owner is not None:
            self._owner.start()
        self._set_status("connected")
        self.connect_seconds = time.monotonic() - self._started
        self._connected.set()
        log.info("%s connected to %s (%s)", self.role, peer.name, peer.fingerprint)

    def _on_channel_close(self, reason: str) -> None:
        self._set_status("closed")
        if self._owner is not None:
            self._owner.peer_gone()  # what the scientist still waited for can no longer be delivered
        if not self._closing:
            level = logging.INFO if reason.startswith("the peer closed") else logging.WARNING
            log.log(level, "session ended: %s", reason)
        for callback in list(self._on_close_callbacks):
            callback(reason)

    def wait_for_peer(self, timeout: float | None = None) -> Duet:
        """Block until the scientist is connected. Raises the reason if pairing failed."""

        async def wait() -> None:
            await asyncio.wait_for(self._connected.wait(), timeout)

        if self._status != "connected":
            try:
                loop.run(wait())
            except asyncio.TimeoutError as exc:
                raise ConnectionError(f"no scientist connected within {timeout} s") from exc
        if self._error is not None:
            raise self._error
        if self._status != "connected":
            raise ConnectionError(f"the session is {self._status}")
        return self

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the session is closed (by either side, or the peer is lost). True if it closed."""

        async def wait() -> None:
            closed = asyncio.Event()
            self._on_close_callbacks.append(lambda _reason: closed.set())
            if self._status != "closed":
                await closed.wait()

        try:
            loop.run(asyncio.wait_for(wait(), timeout))
        except (asyncio.TimeoutError, DuetError):
            return self._status == "closed"
        return True

    @property
    def close_reason(self) -> str:
        """Why the session ended ('' while it runs)."""
        if self._channel is not None and self._channel.closed:
            return self._channel.close_reason
        return str(self._error or "")

    def close(self) -> None:
        """End the session on both sides (idempotent)."""
        if self._closing:
            return
        self._closing = True
        loop.run(self._close(), timeout=10)

    async def _close(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.cancel()
            await asyncio.gather(self._waiter, return_exceptions=True)
        if self._pending is not None and self._channel is None:  # no scientist came: withdraw the offer
            try:
                async with SignalingClient(self.signaling_url, timeout=2) as client:
                    await client.cancel(self._pending.key)
            except DuetError as exc:
                log.info("could not cancel the session on the signaling server: %s", exc)
        if self._channel is not None:
            await self._channel.close("closed by the " + self.role)
        self._stop.set()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._owner is not None:
            await self._owner.stop()
            self._owner.close()
        self._set_status("closed")
        self._connected.set()

    def __enter__(self) -> Duet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- messages ------------------------------------------------------------------------------------

    @property
    def channel(self) -> Channel:
        if self._channel is None or self._status != "connected":
            if self._error is not None:
                raise ConnectionError(f"the session is {self._status}: {self._error}")
            raise ConnectionError(f"the session is {self._status}: no peer connected")
        return self._channel

    def _dispatch(self, msg: Message) -> Any:
        handler = self.handlers.get(msg.type)
        if handler is None:
            msg.reply(
                {"t": "error", "kind": "ProtocolError", "message": f"unknown message type {msg.type[:60]!r}"}
            )
            return None
        return handler(msg)

    def _on_echo(self, msg: Message) -> None:
        msg.reply({"t": "echo"}, msg.buffers)

    def _on_error(self, msg: Message) -> None:
        warnings.warn(
            f"the peer reports: {msg.header.get('kind')}: {str(msg.header.get('message'))[:300]}",
            stacklevel=1,
        )

    def echo(self, payload: bytes, timeout: float = 60.0) -> bytes:
        """Send bytes to the peer and get them back (a check of the channel in both directions)."""

        async def go() -> bytes:
            reply = await self.channel.request({"t": "echo"}, [payload], timeout=timeout)
            return b"".join(bytes(b) for b in reply.buffers)

        return loop.run(go())

    def ping(self, timeout: float = 10.0) -> float:
        """Round-trip time to the peer, in seconds."""

        async def go() -> float:
            start = time.perf_counter()
            await self.channel.request({"t": "echo"}, timeout=timeout)
            return time.perf_counter() - start

        return loop.run(go())
