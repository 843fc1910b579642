"""The message channel over one aiortc data channel: chunking, backpressure, request/reply, liveness.

Every duet frame (see :mod:`duet.wire`) is cut into data-channel messages no larger than the peer accepts::

     0       1               5
     +-------+---------------+---------------------------+
     | flags | stream (u32)  | part of the frame          |
     +-------+---------------+---------------------------+
     flags: bit 0 = first part of a frame, bit 1 = last part

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
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import wire
from .errors import ConnectionError, ProtocolError, RequestTimeout

__all__ = ["Channel", "Message", "DEFAULT_MAX_FRAME"]

log = logging.getLogger("duet.transport")

_PART = struct.Struct(">BI")
_FIRST, _LAST = 1, 2
DEFAULT_MAX_FRAME = 1 << 30  # 1 GiB: the largest frame a peer may send us
HIGH_WATER = 1 << 20
LOW_WATER = 256 * 1024
MAX_PARTIAL = 64  # frames being reassembled at once


Progress = Callable[[int, int], None]


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
        self._max_frame = max_frame
        self._heartbeat, self._dead_after = heartbeat, dead_after
        self._ids = itertools.count(1)
        self._streams = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._urgent: collections.deque[bytes] = collections.deque()
        self._ordered: collections.deque[_Outgoing] = collections.deque()
        self._bulk: collections.deque[_Outgoing] = collections.deque()
        self._turn = 0
        self._partial: dict[int, bytearray] = {}
        self._progress: dict[int, Progress] = {}  # correlation id -> callback for the reply's arrival
        self._incoming: dict[int, tuple[Progress, int]] = {}  # stream -> (callback, frame size)
        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self._wake = asyncio.Event()
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
                self._dc.send(_PART.pack(_FIRST | _LAST, 0) + wire.pack({"t": "bye", "reason": reason}))
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
        if not ordered and size <= self._part_size:
            payload = segments[0] if len(segments) == 1 else b"".join(segments)
            self._urgent.append(_PART.pack(_FIRST | _LAST, 0) + bytes(payload))
        else:
            out = _Outgoing(next(self._streams), segments, size, progress)
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
        cid = next(self._ids)
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        if progress is not None:
            self._progress[cid] = progress
        try:
            self.send({**header, "id": cid}, buffers)
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError as exc:
            raise RequestTimeout(f"no reply to {header.get('t')!r} within {timeout} s") from exc
        finally:
            self._pending.pop(cid, None)
            self._progress.pop(cid, None)

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
            try:
                dc.send(data)
            except Exception as exc:  # noqa: BLE001 - aiortc raises InvalidStateError and others
                self._lost(f"sending failed: {exc!r}")
                return
            self.bytes_sent += len(data)
            self._last_sent = time.monotonic()
            if (self._bulk or self._ordered) and not self._urgent:
                await asyncio.sleep(0)  # let incoming traffic and heartbeats through between parts

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
        if flags & _FIRST:
            if stream in self._partial or len(self._partial) >= MAX_PARTIAL:
                self._protocol_error("too many interleaved frames, or a frame restarted")
                self._partial.pop(stream, None)
                return
            self._partial[stream] = bytearray(body)
            if self._progress:
                self._watch(stream, body)
            return
        buf = self._partial.get(stream)
        if buf is None:
            self._protocol_error("a frame part with no start")
            return
        if len(buf) + len(body) > self._max_frame:
            del self._partial[stream]
            self._protocol_error(f"a frame larger than {self._max_frame} bytes")
            return
        buf += body
        watched = self._incoming.get(stream)
        if watched is not None:
            self._report(watched[0], len(buf), watched[1])
        if flags & _LAST:
            del self._partial[stream]
            self._incoming.pop(stream, None)
            self._deliver(memoryview(buf))

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
        self._inbox.put_nowait(msg)

    def _protocol_error(self, what: str) -> None:
        log.warning("dropped malformed input from the peer: %s", what)
        if not self._closed:
            self.send({"t": "error", "kind": "ProtocolError", "message": what[:500]}, ordered=False)

    async def _dispatcher(self) -> None:
        """Hand messages to the session one at a time, in arrival order (calls are pipelined)."""
        handled = 0
        while True:
            msg = await self._inbox.get()
            if msg is None:
                return
            handled += 1
            if handled % 64 == 0:
                await asyncio.sleep(0)  # a flood of messages must not starve heartbeats and sending
            try:
                result = self._on_message(msg)
                if result is not None:
                    await result
            except Exception:  # noqa: BLE001 - a handler bug must not stop the session
                log.exception("handler for %r failed", msg.type)

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


class _Outgoing:
    """A large frame being sent part by part, without joining its segments into one buffer."""

    def __init__(
        self, stream: int, segments: list[wire.Buffer], size: int, progress: Progress | None
    ) -> None:
        self.stream = stream
        self.size = size
        self._progress = progress
        self._segments = collections.deque(memoryview(s) for s in segments)
        self._left = size
        self._first = True

    @property
    def done(self) -> bool:
        return self._left == 0

    def next_part(self, part_size: int) -> bytes:
        n = min(part_size, self._left)
        flags = (_FIRST if self._first else 0) | (_LAST if n == self._left else 0)
        self._first = False
        pieces: list[wire.Buffer] = [_PART.pack(flags, self.stream)]
        need = n
        while need:
            seg = self._segments[0]
            if len(seg) <= need:
                pieces.append(seg)
                need -= len(seg)
                self._segments.popleft()
            else:
                pieces.append(seg[:need])
                self._segments[0] = seg[need:]
                need = 0
        self._left -= n
        if self._progress is not None:
            Channel._report(self._progress, self.size - self._left, self.size)
        return b"".join(pieces)
