"""duet.transport.Channel over an in-memory data channel: order, direct sends, dispatch, timeouts, limits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from duet import parts, wire
from duet.errors import ProtocolError, RequestTimeout
from duet.transport import HIGH_WATER, Channel, Message


class FakeDC:
    """The part of aiortc's RTCDataChannel a Channel uses; sent messages reach ``peer`` on a later tick."""

    def __init__(self) -> None:
        self.readyState = "open"
        self.bufferedAmount = 0
        self.bufferedAmountLowThreshold = 0
        self.sent: list[bytes] = []
        self.peer: FakeDC | None = None
        self._handlers: dict[str, Callable[..., Any]] = {}

    def on(self, event: str, handler: Callable[..., Any]) -> None:
        self._handlers[event] = handler

    def send(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        asyncio.get_running_loop()  # aiortc's send schedules a task: only on the loop's thread
        self.sent.append(data)
        if self.peer is not None:
            asyncio.get_running_loop().call_soon(self.peer._handlers["message"], data)


class FakePC:
    connectionState = "connected"

    def on(self, event: str, handler: Callable[..., Any]) -> None:
        pass

    async def close(self) -> None:
        pass


def _pair(on_a: Any, on_b: Any, **kw: Any) -> tuple[Channel, Channel, FakeDC, FakeDC]:
    da, db = FakeDC(), FakeDC()
    da.peer, db.peer = db, da
    a = Channel(FakePC(), da, on_message=on_a, max_message=1029, **kw)  # 1024-byte parts
    b = Channel(FakePC(), db, on_message=on_b, max_message=1029, **kw)
    a.start()
    b.start()
    return a, b, da, db


def test_requests_are_answered_and_time_out() -> None:
    async def go() -> None:
        a, b, _, _ = _pair(lambda m: None, lambda m: m.reply({"t": "ok", "n": m.header["n"]}, m.buffers))
        big = bytes(range(256)) * 40  # ten parts
        reply = await a.request({"t": "x", "n": 1}, [big])
        assert reply.header["n"] == 1 and bytes(reply.buffers[0]) == big
        b._on_message = lambda m: None  # stops answering
        with pytest.raises(RequestTimeout, match="no reply to 'x' within 0.05 s"):
            await a.request({"t": "x", "n": 2}, timeout=0.05)
        await asyncio.sleep(0)
        assert not a._pending and not a._progress
        fut = a.request_future({"t": "x", "n": 3}, timeout=10)
        fut.cancel()
        await asyncio.sleep(0)
        assert not a._pending
        await a.close(notify=False)
        await b.close(notify=False)

    asyncio.run(go())


def test_ordered_frames_keep_their_order_whether_sent_directly_or_in_parts() -> None:
    seen: list[int] = []

    async def go() -> None:
        a, b, da, _ = _pair(lambda m: None, lambda m: seen.append(m.header["n"]))
        a.send({"t": "o", "n": 0})  # alone: straight to the data channel
        assert len(da.sent) == 1
        a.send({"t": "o", "n": 1}, [bytes(5000)])  # in parts, through the sender task
        a.send({"t": "o", "n": 2})  # small, but must wait behind frame 1
        a.send({"t": "o", "n": 3}, ordered=False)  # unordered: may go at once
        assert len(da.sent) == 2
        da.bufferedAmount = HIGH_WATER + 1
        a.send({"t": "o", "n": 4}, ordered=False)  # backpressure: queued for the sender
        assert len(da.sent) == 2
        da.bufferedAmount = 0
        a._low.set()
        for _ in range(50):
            await asyncio.sleep(0)
        await a.close(notify=False)
        await b.close(notify=False)

    asyncio.run(go())
    assert seen[0] == 0 and seen.index(1) < seen.index(2)
    assert sorted(seen) == [0, 1, 2, 3, 4]


def test_a_frame_sent_from_another_thread_waits_for_the_sender_task() -> None:
    seen: list[int] = []

    async def go() -> None:
        a, b, da, _ = _pair(lambda m: None, lambda m: seen.append(m.header["n"]))
        await asyncio.to_thread(a.send, {"t": "o", "n": 1})  # queued: FakeDC.send raises off the loop
        a._wake.set()  # what the next frame sent on the loop would do
        for _ in range(20):
            await asyncio.sleep(0)
        assert not a.closed and len(da.sent) == 1
        await a.close(notify=False)
        await b.close(notify=False)

    asyncio.run(go())
    assert seen == [1]


def test_a_slow_handler_finishes_before_the_next_message_is_handled() -> None:
    log: list[str] = []
    handled: dict[int, asyncio.Event] = {}

    def handler(m: Message) -> Any:
        n = m.header["n"]
        if n == 0:

            async def slow() -> None:
                log.append("start 0")
                await asyncio.sleep(0.02)  # the handler's own slowness, which the next messages must wait out
                log.append("end 0")

            return slow()
        if n == 1:
            raise ValueError("a handler bug")
        log.append(f"handle {n}")
        handled[n].set()
        return None

    async def go() -> None:
        handled.update({n: asyncio.Event() for n in (2, 3, 4)})
        a, b, _, _ = _pair(lambda m: None, handler)
        for n in range(4):
            a.send({"t": "o", "n": n})
        await asyncio.wait_for(handled[3].wait(), 5)
        a.send({"t": "o", "n": 4})  # the dispatcher is idle again: handled as it arrives
        await asyncio.wait_for(handled[4].wait(), 5)
        await a.close(notify=False)
        await b.close(notify=False)

    asyncio.run(go())
    assert log == ["start 0", "end 0", "handle 2", "handle 3", "handle 4"]


def test_reassembly_bounds_what_a_peer_can_make_us_hold() -> None:
    r = parts.Reassembly(max_frame=3000)
    assert r.add(parts._FIRST, 7, memoryview(b"a" * 1000)) == (1000, None)
    with pytest.raises(ProtocolError, match="restarted"):
        r.add(parts._FIRST, 7, memoryview(b"a"))
    assert len(r) == 0
    with pytest.raises(ProtocolError, match="no start"):
        r.add(0, 8, memoryview(b"a"))
    r.add(parts._FIRST, 9, memoryview(b"a" * 1000))
    r.add(0, 9, memoryview(b"b" * 1000))
    with pytest.raises(ProtocolError, match="larger than 3000"):
        r.add(parts._LAST, 9, memoryview(b"c" * 1001))
    assert len(r) == 0
    for stream in range(parts.MAX_PARTIAL):
        r.add(parts._FIRST, stream, memoryview(b"x"))
    with pytest.raises(ProtocolError, match="too many"):
        r.add(parts._FIRST, 999, memoryview(b"x"))
    done, frame = r.add(parts._LAST, 0, memoryview(b"yz"))
    assert done == 3 and frame is not None and bytes(frame) == b"xyz"


def test_interleaved_frames_cannot_hold_more_than_one_frame_together() -> None:
    r = parts.Reassembly(max_frame=3000)
    r.add(parts._FIRST, 1, memoryview(b"a" * 1500))
    r.add(parts._FIRST, 2, memoryview(b"b" * 1000))
    with pytest.raises(ProtocolError, match="together"):  # a third start would take the total past 3000
        r.add(parts._FIRST, 3, memoryview(b"c" * 600))
    with pytest.raises(ProtocolError, match="together"):  # so would a part of one already started
        r.add(0, 2, memoryview(b"b" * 600))
    assert len(r) == 1  # the frame that overflowed is forgotten, and its bytes with it
    done, frame = r.add(parts._LAST, 1, memoryview(b"a" * 1500))  # room again: 1500 + 1500
    assert done == 3000 and frame is not None
    r.add(parts._FIRST, 4, memoryview(b"d" * 3000))  # everything completed or forgotten is given back


def test_a_malformed_part_is_dropped_and_reported() -> None:
    async def go() -> list[bytes]:
        a, b, _, db = _pair(lambda m: None, lambda m: None)
        b._on_dc_message(b"\x00\x00\x00\x00\x05rest")  # a middle part of a frame never started
        b._on_dc_message(parts._SINGLE + b"not a frame")
        await asyncio.sleep(0)
        sent = list(db.sent)
        await a.close(notify=False)
        await b.close(notify=False)
        return sent

    errors = [wire.unpack(memoryview(m)[parts._PART.size :])[0] for m in asyncio.run(go())]
    assert [e["t"] for e in errors] == ["error", "error"]
    assert "no start" in errors[0]["message"]


def test_a_laid_out_frame_takes_exactly_the_size_its_first_part_declares() -> None:
    data = wire.pack({"t": "x"}, [b"q" * 5000])
    r = parts.Reassembly(max_frame=100_000)
    r.add(parts._FIRST, 1, memoryview(data[:1000]))
    with pytest.raises(ProtocolError, match="past the"):
        r.add(0, 1, memoryview(data[1000:] + b"extra"))
    assert len(r) == 0
    r.add(parts._FIRST, 2, memoryview(data[:1000]))
    with pytest.raises(ProtocolError, match="not the"):
        r.add(parts._LAST, 2, memoryview(data[1000:-1]))
    assert len(r) == 0
    r.add(parts._FIRST, 3, memoryview(data[:1000]))
    done, frame = r.add(parts._LAST, 3, memoryview(data[1000:]))
    assert done == len(data) and frame is not None and bytes(frame) == data
    assert type(frame.obj) is parts.FrameBuffer
    small = parts.Reassembly(max_frame=3000)
    with pytest.raises(ProtocolError, match="larger than 3000"):  # refused from its declaration
        small.add(parts._FIRST, 1, memoryview(data[:1000]))
    assert len(small) == 0
