"""The owner runs frames of calls back to back in its executor thread, in order, while its loop thread
reads the next messages; a message that reads what calls made (metadata, a request, the store listing)
waits for the frames received before it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import torch

from duet import owner as owner_module
from duet.owner import OwnerService
from duet.transport import Message


class FakeChannel:
    closed = False

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, header: dict[str, Any], buffers: Any = (), **kw: Any) -> None:
        self.sent.append(header)


def _dispatch(service: OwnerService, messages: list[Message]) -> list[bool]:
    """As the transport's dispatcher: one message at a time, awaiting what a handler returns. Returns, for
    each message, whether its handler returned before the executor had run every frame before it."""

    async def go() -> list[bool]:
        handlers = service.handlers()
        early = []
        for msg in messages:
            result = handlers[msg.type](msg)
            early.append(result is None and bool(service._pending) and not service._pending[-1].done())
            if result is not None:
                await result
        # the frames, run; their reports were handed to this loop before, so they have been sent too
        await asyncio.wrap_future(service._pool.submit(lambda: None))
        return early

    return asyncio.run(go())


def test_frames_run_back_to_back_and_a_later_request_waits_for_them(monkeypatch: Any) -> None:
    service = OwnerService(requester=lambda: "scientist")
    x = service.store.publish(torch.arange(6.0), name="x")
    gate = threading.Event()
    real = service.executor.run_ops
    order: list[int] = []

    def run_ops(ops: Any, buffers: Any) -> Any:
        gate.wait(5)  # the first frame is still running while the loop thread reads the next messages
        order.append(len(order))
        return real(ops, buffers)

    monkeypatch.setattr(service.executor, "run_ops", run_ops)
    channel = FakeChannel()
    frames = [
        {"t": "ops", "ops": [{"k": "meth", "o": "s1", "s": x.id, "n": "__mul__", "a": ["list", 2.0]}]},
        {"t": "ops", "ops": [{"k": "meth", "o": "s2", "s": "s1", "n": "sum"}]},
        {"t": "ops", "ops": [{"k": "call", "o": "s3", "p": "torch.nonexistent", "a": ["list"]}]},
        {"t": "meta", "o": "s2", "id": 7},
    ]
    messages = [Message(h, [], channel) for h in frames]  # type: ignore[arg-type]
    threading.Timer(0.2, gate.set).start()
    early = _dispatch(service, messages)
    assert early[:3] == [True, True, True]  # the dispatcher did not wait for the frames to run
    assert order == [0, 1, 2]
    kinds = [h["t"] for h in channel.sent]
    assert kinds == ["failed", "meta"]  # the failure of a frame before it, then the reply
    assert channel.sent[0]["o"] == "s3" and channel.sent[1]["meta"]["shape"] == []
    assert service.store.lookup("s2").obj.item() == 30.0
    service.close()


def test_the_owner_stops_reading_when_too_many_frames_wait(monkeypatch: Any) -> None:
    monkeypatch.setattr(owner_module, "MAX_PENDING_FRAMES", 3)
    service = OwnerService(requester=lambda: "scientist")
    gate = threading.Event()
    real = service.executor.run_ops
    monkeypatch.setattr(service.executor, "run_ops", lambda ops, b: (gate.wait(5), real(ops, b))[1])
    channel = FakeChannel()
    messages = [
        Message({"t": "ops", "ops": [{"k": "py", "o": f"s{i}", "n": "Int", "a": ["list", i]}]}, [], channel)  # type: ignore[arg-type]
        for i in range(1, 6)
    ]
    waited: list[int] = []

    async def go() -> None:
        handlers = service.handlers()
        for i, msg in enumerate(messages):
            result = handlers["ops"](msg)
            if result is not None:
                waited.append(i)
                if not gate.is_set():
                    gate.set()
                await result
        await asyncio.wrap_future(service._pool.submit(lambda: None))

    asyncio.run(go())
    assert waited and waited[0] == 3  # the fourth frame waited for the first
    assert [service.store.lookup(f"s{i}").obj for i in range(1, 6)] == [1, 2, 3, 4, 5]
    service.close()


def test_a_reply_waits_for_the_failures_of_a_frame_that_has_just_run() -> None:
    """A frame can finish in the executor's thread while the loop thread is busy: until the loop thread has
    sent its failures, a reply that waits for it still waits (or it would overtake them)."""
    service = OwnerService(requester=lambda: "scientist")
    x = service.store.publish(torch.arange(3.0), name="x")
    channel = FakeChannel()
    frame = {"t": "ops", "ops": [{"k": "call", "o": "s1", "p": "torch.nonexistent", "a": ["list"]}]}
    meta = {"t": "meta", "o": x.id, "id": 3}

    async def go() -> None:
        handlers = service.handlers()
        assert handlers["ops"](Message(frame, [], channel)) is None  # type: ignore[arg-type]
        # (this thread, the loop's, stays busy) the executor's one thread runs in order: once a no-op after
        # the frame is done, the frame has run and its report waits in the loop's queue
        service._pool.submit(lambda: None).result(timeout=5)
        result = handlers["meta"](Message(meta, [], channel))  # type: ignore[arg-type]
        if result is not None:
            await result
        await asyncio.sleep(0)

    asyncio.run(go())
    assert [h["t"] for h in channel.sent] == ["failed", "meta"]
    service.close()
