"""The message channel over one aiortc data channel: chunking, backpressure, request/reply, liveness.

Every duet frame (see :mod:`duet.wire`) is cut into data-channel messages no larger than the peer accepts
(see :mod:`duet.parts`).

Three lanes share the channel. Ordered frames (calls, requests: anything whose effect depends on what
came before) go first-in first-out, one frame after the other, so the peer sees them in the order they were
sent. Unordered frames (replies, heartbeats) that fit one message jump ahead of everything; larger ones (a
value being released) are interleaved part by part with each other and with the ordered lane, so a decision
or a heartbeat is never stuck behind a 64 MB tensor. Sending waits on
the channel's ``bufferedamountlow`` event whenever ``bufferedAmount`` is above the high-water mark.
Replies are matched to requests by correlation id (``dict[id, Future]``), each with a timeout. The peer's
liveness is watched through the connection state *and* a heartbeat: a peer silent for ``dead_after``
seconds (killed, unplugged) is declared gone, failing every waiting request with ConnectionError.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import wire
from .errors import ConnectionError, ProtocolError, RequestTimeout
from .parts import _FIRST, _LAST, _PART, _SINGLE, DEFAULT_MAX_FRAME, Outgoing, Progress, Reassembly

__all__ = ["Channel", "Message", "DEFAULT_MAX_FRAME"]

log = logging.getLogger("duet.transport")

HIGH_WATER = 1 << 20
LOW_WATER = 256 * 1024


@dataclass
class Message:
    """One received frame: its header (a dict), its raw buffers, and the way to answer it."""

    header: dict[str, Any]
    buffers: list[memoryview]
    channel: Channel = field(repr=False)

    @property
    def type(self) -> str:
        return str(self.header.get("t", ""))

    def reply(
        self, header: dict[str, Any], buffers: Sequence[wire.Buffer] = (), progress: Progress | None = None
    ) -> None:
        """Answer this message (unordered: a reply never waits behind later calls). A peer that has
        left gets nothing, quietly."""
        cid = self.header.get("id")
        if cid is not None and not self.channel.closed:
            self.channel.send({**header, "re": cid}, buffers, ordered=False, progress=progress)


Handler = Callable[[Message], Awaitable[None] | None]


class Channel:
    """Framed, chunked, backpressured messages with request/reply over an aiortc data channel."""

    def __init__(
        self,
        pc: Any,
        dc: Any,
        *,
        on_message: Handler,
        on_close: Callable[[str], None] | None = None,
        max_message: int = 65536,
        max_frame: int = DEFAULT_MAX_FRAME,
        heartbeat: float = 1.0,
        dead_after: float = 6.0,
    ) -> None:
        self._pc, self._dc = pc, dc
        self._on_message, self._on_close = on_message, on_close
        self._part_size = max(1024, max_message - _PART.size)
        self._heartbeat, self._dead_after = heartbeat, dead_after
        self._ids = itertools.count(1)
        self._streams = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._urgent: collections.deque[bytes] = collections.deque()
        self._ordered: collections.deque[Outgoing] = collections.deque()
        self._bulk: collections.deque[Outgoing] = collections.deque()
        self._turn = 0
        self._partial = Reassembly(max_frame)
        self._progress: dict[int, Progress] = {}  # correlation id -> callback for the reply's arrival
        self._incoming: dict[int, tuple[Progress, int]] = {}  # stream -> (callback, frame size)
        self._inbox: asyncio.Queue[Message | _Running | None] = asyncio.Queue()
        self._idle = False  # the dispatcher waits for a message and none is being handled
        self._wake = asyncio.Event()
        self._loop = _running_loop()  # aiortc's objects may only be used on the loop they were made on
        self._low = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.close_reason = ""
        self._last_seen = self._last_sent = time.monotonic()
        self.bytes_sent = self.bytes_received = 0
        dc.bufferedAmountLowThreshold = LOW_WATER
        dc.on("message", self._on_dc_message)
        dc.on("bufferedamountlow", self._low.set)
        dc.on("close", lambda: self._lost("the data channel was closed"))
        pc.on("connectionstatechange", self._on_state)

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        for coro in (self._sender(), self._dispatcher(), self._watchdog()):
            task = asyncio.ensure_future(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @property
    def closed(self) -> bool:
        return self._closed

    def _on_state(self) -> None:
        state = self._pc.connectionState
        if state in ("failed", "closed"):
            self._lost(f"the peer connection is {state}")

    def _lost(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_reason = reason
        log.info("channel closed: %s", reason)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError(f"the peer is gone: {reason}"))
        self._pending.clear()
        self._inbox.put_nowait(None)
        self._wake.set()
        self._low.set()
        if self._on_close is not None:
            self._on_close(reason)

    async def close(self, reason: str = "closed by this side", notify: bool = True) -> None:
        """Close the channel (idempotent). With ``notify`` the peer is told first, briefly."""
        if notify and not self._closed and self._dc.readyState == "open":
            try:
                self._dc.send(_SINGLE + wire.pack({"t": "bye", "reason": reason}))
                await asyncio.sleep(0.05)  # let SCTP flush the goodbye
            except Exception:  # noqa: BLE001 - best effort: the peer also notices via state
                pass
        self._lost(reason)
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._pc.close()

    # ---- sending ---------------------------------------------------------------------------------

    def send(
        self,
        header: dict[str, Any],
        buffers: Sequence[wire.Buffer] = (),
        *,
        ordered: bool = True,
        progress: Progress | None = None,
    ) -> None:
        """Queue a frame (non-blocking). Raises ConnectionError if the channel is closed."""
        if self._closed:
            raise ConnectionError(f"the session is closed ({self.close_reason})")
        segments = wire.pack_segments(header, buffers)
        size = sum(len(s) for s in segments)
        if size <= self._part_size and (not ordered or not self._ordered):
            data = b"".join([_SINGLE, *segments])
            if not self._urgent and self._dc.bufferedAmount <= HIGH_WATER and _running_loop() is self._loop:
                self._transmit(data)  # on the loop, behind nothing: no hop through the sender task
                return
            if not ordered:
                self._urgent.append(data)
                self._wake.set()
                return
        out = Outgoing(next(self._streams), segments, size, _reporter(progress))
        (self._ordered if ordered else self._bulk).append(out)
        self._wake.set()

    async def request(
        self,
        header: dict[str, Any],
        buffers: Sequence[wire.Buffer] = (),
        timeout: float | None = 30.0,
        progress: Progress | None = None,
    ) -> Message:
        """Send a frame and wait for the frame that answers it (``progress`` follows the reply's arrival)."""
        return await self.request_future(header, buffers, timeout, progress)

    def request_future(
        self,
        header: dict[str, Any],
        buffers: Sequence[wire.Buffer] = (),
        timeout: float | None = 30.0,
        progress: Progress | None = None,
    ) -> asyncio.Future[Message]:
        """(loop thread) Send a frame; a future for the frame that answers it, failing with RequestTimeout
        after ``timeout`` seconds (a timer, not a task). Cancelling the future forgets the request."""
        cid = next(self._ids)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Message] = loop.create_future()
        what = f"no reply to {header.get('t')!r} within {timeout} s"
        timer = None if timeout is None else loop.call_later(timeout, _expire, fut, what)

        def forget(_: asyncio.Future[Message]) -> None:
            if timer is not None:
                timer.cancel()
            self._pending.pop(cid, None)
            self._progress.pop(cid, None)

        fut.add_done_callback(forget)
        self._pending[cid] = fut
        if progress is not None:
            self._progress[cid] = progress
        try:
            self.send({**header, "id": cid}, buffers)
        except BaseException:
            fut.cancel()
            raise
        return fut

    async def _sender(self) -> None:
        dc = self._dc
        while not self._closed:
            if not self._urgent and not self._bulk and not self._ordered:
                self._wake.clear()
                await self._wake.wait()
                continue
            if dc.bufferedAmount > HIGH_WATER:
                self._low.clear()
                if dc.bufferedAmount > HIGH_WATER:
                    await self._low.wait()
                continue
            if self._urgent:
                data = self._urgent.popleft()
            else:
                self._turn ^= 1
                if self._ordered and (self._turn or not self._bulk):
                    out = self._ordered[0]
                    data = out.next_part(self._part_size)
                    if out.done:
                        self._ordered.popleft()
                else:
                    out = self._bulk[0]
                    data = out.next_part(self._part_size)
                    if out.done:
                        self._bulk.popleft()
                    else:
                        self._bulk.rotate(-1)
            if not self._transmit(data):
                return
            if (self._bulk or self._ordered) and not self._urgent:
                await asyncio.sleep(0)  # let incoming traffic and heartbeats through between parts

    def _transmit(self, data: bytes) -> bool:
        try:
            self._dc.send(data)
        except Exception as exc:  # noqa: BLE001 - aiortc raises InvalidStateError and others
            self._lost(f"sending failed: {exc!r}")
            return False
        self.bytes_sent += len(data)
        self._last_sent = time.monotonic()
        return True

    # ---- receiving -------------------------------------------------------------------------------

    def _on_dc_message(self, data: bytes | str) -> None:
        self._last_seen = time.monotonic()
        if isinstance(data, str) or len(data) < _PART.size:
            self._protocol_error("a data-channel message that is not a duet part")
            return
        self.bytes_received += len(data)
        flags, stream = _PART.unpack_from(data, 0)
        body = memoryview(data)[_PART.size :]
        if flags == _FIRST | _LAST:
            self._deliver(body)
            return
        try:
            done, frame = self._partial.add(flags, stream, body)
        except ProtocolError as exc:
            self._protocol_error(str(exc))
            return
        if flags & _FIRST:
            if self._progress:
                self._watch(stream, body)
            return
        watched = self._incoming.get(stream)
        if watched is not None:
            self._report(watched[0], done, watched[1])
        if frame is not None:
            self._incoming.pop(stream, None)
            self._deliver(frame)

    def _watch(self, stream: int, first: memoryview) -> None:
        """A large reply is arriving: if someone follows its progress, tell them as its parts come."""
        peeked = wire.peek(first)
        if peeked is None or not isinstance(peeked[0], dict):
            return
        callback = self._progress.get(peeked[0].get("re"))  # type: ignore[arg-type]
        if callback is not None:
            self._incoming[stream] = (callback, peeked[1])
            self._report(callback, len(first), peeked[1])

    @staticmethod
    def _report(callback: Progress, done: int, total: int) -> None:
        try:
            callback(done, total)
        except Exception:  # noqa: BLE001 - a progress display must never break a transfer
            log.debug("progress callback failed", exc_info=True)

    def _deliver(self, data: memoryview) -> None:
        try:
            header, buffers = wire.unpack(data)
        except ProtocolError as exc:
            self._protocol_error(str(exc))
            return
        if not isinstance(header, dict):
            self._protocol_error("a frame whose header is not a message")
            return
        msg = Message(header, buffers, self)
        t = header.get("t")
        if t == "hb":
            return
        if t == "bye":
            self._lost(f"the peer closed the session ({str(header.get('reason', ''))[:200]})")
            return
        re = header.get("re")
        if re is not None:
            fut = self._pending.pop(re, None) if type(re) is int else None
            if fut is not None and not fut.done():
                fut.set_result(msg)
            return
        if self._closed or not self._idle or not self._inbox.empty():
            self._inbox.put_nowait(msg)  # behind what is being handled: arrival order
            return
        try:  # nothing before it: handle it now, no hop through the dispatcher task
            result = self._on_message(msg)
        except Exception:  # noqa: BLE001 - a handler bug must not stop the session
            log.exception("handler for %r failed", msg.type)
            return
        if result is not None:  # the rest of it runs in the dispatcher, before any later message
            self._idle = False
            self._inbox.put_nowait(_Running(msg.type, result))

    def _protocol_error(self, what: str) -> None:
        log.warning("dropped malformed input from the peer: %s", what)
        if not self._closed:
            self.send({"t": "error", "kind": "ProtocolError", "message": what[:500]}, ordered=False)

    async def _dispatcher(self) -> None:
        """Hand messages to the session one at a time, in arrival order (calls are pipelined)."""
        handled = 0
        while True:
            self._idle = True
            item = await self._inbox.get()
            self._idle = False
            if item is None:
                return
            try:
                if isinstance(item, _Running):
                    await item.result
                    continue
                handled += 1
                if handled % 64 == 0:
                    await asyncio.sleep(0)  # a flood of messages must not starve heartbeats and sending
                result = self._on_message(item)
                if result is not None:
                    await result
            except Exception:  # noqa: BLE001 - a handler bug must not stop the session
                log.exception("handler for %r failed", item.type)

    async def _watchdog(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._heartbeat)
            now = time.monotonic()
            if now - self._last_seen > self._dead_after:
                self._lost(f"no sign of life from the peer for {self._dead_after:.0f} s")
                await self._pc.close()
                return
            if now - self._last_sent >= self._heartbeat and not self._urgent and not self._closed:
                self.send({"t": "hb"}, ordered=False)


@dataclass
class _Running:
    """A handler's unfinished work, which the dispatcher finishes before the next message."""

    type: str
    result: Awaitable[None]


def _running_loop() -> asyncio.AbstractEventLoop | None:
    return asyncio._get_running_loop()


def _reporter(progress: Progress | None) -> Progress | None:
    return None if progress is None else lambda done, total: Channel._report(progress, done, total)


def _expire(fut: asyncio.Future[Message], what: str) -> None:
    if not fut.done():
        fut.set_exception(RequestTimeout(what))
