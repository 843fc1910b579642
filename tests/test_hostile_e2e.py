"""End to end: a hostile scientist. It joins with the real client, then writes frames by hand.

The owner (tests/peers/owner.py, its own process) must answer each with an error or nothing, and stay
whole: its process alive, its store and request history intact, a normal ``get`` still served.
"""

from __future__ import annotations

import asyncio
import collections
import json
import secrets
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from conftest import Peer

import duet
from duet import connect, loop
from duet.session import Duet
from duet.signaling import codes


def on_loop(fn: Any, *args: Any) -> None:
    """Call ``fn`` in duet's loop thread, which owns every aiortc object (never from this thread)."""

    async def go() -> None:
        fn(*args)

    loop.run(go(), timeout=10)


def send(d: Duet, header: dict[str, Any]) -> None:
    """A frame of the hostile scientist's own making, sent as the client would send one."""
    on_loop(d.channel.send, header)


# the owner's notices about the bad frames and failed calls it was sent
pytestmark = pytest.mark.filterwarnings("ignore:the peer reports", "ignore:a remote call whose result")

SETUP = """
d.store.publish(torch.arange(6.0), name="ages", tags=["#ages"], description="six ages")
d.store.publish(torch.tensor([7, 7]), name="secret")
d.requests.add_handler(name="legit", action="accept")
"""


# ---- a raw scientist -------------------------------------------------------------------------------------


def attach_without_hello(session_id: str, signaling_url: str, name: str = "mallory") -> Duet:
    """A scientist connected over real WebRTC that has not said ``hello`` (so the owner has not let it in)."""
    d = Duet(
        "scientist",
        codes.normalize_session_id(session_id),
        name=name,
        signaling_url=signaling_url,
        timeout=30,
    )

    async def go() -> None:
        try:
            pc, dc, peer = await connect.answer(d._client, d.session_id, d.identity, d.name, None, 30)
        finally:
            await d._client.close()
        d._attach(pc, dc, peer)

    loop.run(go(), timeout=40)
    return d


def call(d: Duet, header: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
    """Send a hand-made request frame and return the header of the owner's reply."""

    async def go() -> dict[str, Any]:
        return (await d.channel.request(header, timeout=timeout)).header

    return loop.run(go(), timeout=timeout + 5)


def send_all(d: Duet, headers: list[dict[str, Any]], timeout: float = 60) -> Future[list[Any]]:
    """Send every request at once; returns when the owner has handled them all (not necessarily decided),
    with a future of the replies' headers (or the exception each request ended with)."""

    async def sent() -> asyncio.Future[list[Any]]:
        requests = [asyncio.ensure_future(d.channel.request(h, timeout=timeout)) for h in headers]
        await asyncio.sleep(0)  # each request has run up to its send: all are on the wire, in order
        await d.channel.request({"t": "store"}, timeout=timeout)  # answered after every one before it
        return asyncio.gather(*requests, return_exceptions=True)

    async def replies(gathered: asyncio.Future[list[Any]]) -> list[Any]:
        return [r if isinstance(r, BaseException) else r.header for r in await gathered]

    return loop.submit(replies(loop.run(sent(), timeout=timeout)))


def ask(owner: Peer, expr: str) -> Any:
    owner.send("eval " + expr)
    return json.loads(" ".join(owner.expect("VAL")[1:]))


@pytest.fixture(scope="module")
def hostile(signaling_url: str) -> Iterator[tuple[Peer, Duet]]:
    owner = Peer("owner.py", "--url", signaling_url)
    try:
        sid = owner.expect("SESSION", 60)[1]
        owner.run(SETUP)
        d = duet.join_duet(sid, signaling_url=signaling_url, name="mallory")
        owner.send("wait-peer")
        owner.expect("CONNECTED")
        try:
            yield owner, d
        finally:
            d.close()
    finally:
        owner.close()


@pytest.fixture
def mallory(hostile: tuple[Peer, Duet]) -> Iterator[tuple[Peer, Duet, str]]:
    """The session, the published id of "ages"; afterwards the owner is checked to be whole."""
    owner, d = hostile
    before = ask(owner, "[len(d.requests.history), [e.id for e in d.store]]")
    yield owner, d, d.store["ages"]._duet_id
    assert owner.proc.poll() is None, "the owner's process died"
    assert ask(owner, "[e.id for e in d.store]") == before[1]
    x = d.store["ages"]
    assert x.sum().get(name="legit") == 15.0  # a normal get still works
    hist = ask(owner, "[[r.name, r.status] for r in d.requests.history]")
    assert len(hist) >= before[0] + 1 and hist[-1] == ["legit", "accepted"]
    owner.send("echo 1000")  # the owner's own requests still work
    assert owner.expect("ECHO")[1] == "True"
    owner.run("for r in list(d.requests): r.deny('clean up')")


# ---- the checks -----------------------------------------------------------------------------------------


def test_forged_values_and_replies(mallory: tuple[Peer, Duet, str]) -> None:
    owner, d, ages = mallory
    before = ask(owner, "len(d.requests.history)")
    forged = {"t": "value", "status": "accepted", "v": {"int": 1}}
    reply = call(d, forged)
    assert (reply["t"], reply["kind"]) == ("error", "ProtocolError") and "unknown message type" in reply[
        "message"
    ]
    for re in (1, 2**40, "x", [1], None, -1):
        send(d, {**forged, "re": re})  # a "reply" to nothing the owner asked
    send(d, {"t": "welcome"})
    send(d, {"t": "failed", "o": ages, "kind": "X"})
    assert call(d, {"t": "store"})["t"] == "store"  # the owner got past them all (frames are ordered)
    assert ask(owner, "len(d.requests.history)") == before  # nothing was decided by a forged message


def test_forged_decisions_leave_a_pending_request_pending(mallory: tuple[Peer, Duet, str]) -> None:
    owner, d, ages = mallory
    handle = d.store["ages"].sum().request(name="held", reason="waits for the owner", timeout_secs=120)
    owner.send("wait 10 len(d.requests) == 1")
    assert owner.expect("WAITED", 20)[1] == "True"
    rid, oid = ask(owner, "[d.requests[0].id, d.requests[0].object_id]")
    assert oid == handle.object_id
    before = ask(owner, "len(d.requests.history)")
    accepted = {"status": "accepted", "v": {"int": 1}, "id": rid, "o": oid, "name": "held"}
    decisions: list[dict[str, Any]] = [
        {"t": "value", **accepted},
        {"t": "accept", "id": rid},
        {"t": "accepted", "id": rid},
        {"t": "decide", "id": rid, "status": "accepted", "by": "owner"},
        {"t": "decision", "id": rid, "decision": "accepted"},
        {"t": "grant", "o": oid, "name": "held"},
        {"t": "welcome", "approved": True, "id": rid},
    ]
    for header in decisions:
        reply = call(d, header)  # asked as requests: each one is refused
        assert (reply["t"], reply["kind"]) == ("error", "ProtocolError"), (header, reply)
    for header in decisions:  # and as "replies" to a request of the owner's
        for re in (0, 1, 2, rid):
            send(d, {**header, "re": re})
    assert call(d, {"t": "store"})["t"] == "store"  # the owner has read every frame before this one
    # still pending on both sides; nothing decided, no value reached the scientist
    assert ask(owner, "[[r.id, r.status, r.decided_by] for r in d.requests]") == [[rid, "pending", None]]
    assert ask(owner, "len(d.requests.history)") == before
    assert handle.status == "pending" and handle.value is None
    with pytest.raises(duet.RequestTimeout):
        handle.wait(0.3)
    mine = d.requests.pandas
    assert dict(zip(mine["name"], mine["status"]))["held"] == "pending"
    # the owner decides it, the normal way
    owner.run("d.requests[0].accept()")
    assert handle.wait(10) == 15.0 and handle.status == "accepted"
    assert ask(owner, "[d.requests.history[-1].id, d.requests.history[-1].decided_by]") == [rid, "owner"]


def test_objects_never_given(mallory: tuple[Peer, Duet, str]) -> None:
    owner, d, ages = mallory
    for oid in ("p" + secrets.token_hex(8), "s987654", ages[:-1], ages + "0", "", "../../etc/passwd"):
        for header in (
            {"t": "req", "o": oid, "block": True, "name": "legit"},
            {"t": "meta", "o": oid},
        ):
            reply = call(d, header)
            assert (reply["t"], reply["kind"]) == ("error", "PermissionDenied"), (header, reply)
            assert "no object" in reply["message"]
    # ops may not overwrite or free a published object, nor read one they were not given
    send(
        d,
        {
            "t": "ops",
            "ops": [
                {"k": "put", "o": ages, "v": 0},
                {"k": "del", "ids": [ages]},
                {"k": "meth", "o": "s990001", "s": "p" + "0" * 16, "n": "sum"},
            ],
        },
    )
    reply = call(d, {"t": "meta", "o": "s990001"})
    assert (reply["t"], reply["kind"]) == ("error", "PermissionDenied")
    assert call(d, {"t": "meta", "o": ages})["meta"]["shape"] == [6]
    assert ask(owner, 'd.store["ages"].tolist()') == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_bad_field_types(mallory: tuple[Peer, Duet, str]) -> None:
    owner, d, ages = mallory
    bad: list[dict[str, Any]] = [
        {"t": "req"},
        {"t": "req", "o": 123},
        {"t": "req", "o": [ages]},
        {"t": "req", "o": ages, "timeout": "soon"},
        {"t": "req", "o": ages, "timeout": True},
        {"t": "req", "o": ages, "timeout": float("nan"), "block": True},
        {"t": "req", "o": ages, "timeout": float("inf"), "block": True},
        {"t": "req", "o": ages, "name": {"a": 1}},
        {"t": "req", "o": ages, "name": "legit", "reason": b"\x00\x01"},
        {"t": "req", "o": ages, "name": "legit", "block": "yes"},
        {"t": "req", "o": ages, "name": "legit", "delete": 1},
        {"t": "meta", "o": {"id": ages}},
        {"t": "meta"},
    ]
    before = ask(owner, "len(d.requests.history)")
    for header in bad:
        reply = call(d, header)
        assert (reply["t"], reply["kind"]) == ("error", "ProtocolError"), (header, reply)
    assert ask(owner, "[len(d.requests), len(d.requests.history)]") == [0, before]
    # oversized text is cut, not refused; ops that are not ops are answered by an error notice
    reply = call(d, {"t": "req", "o": ages, "name": "n" * 1_000_000, "reason": "r" * 1_000_000})
    assert (reply["t"], reply["status"]) == ("value", "denied")
    assert ask(owner, "[len(d.requests.history[-1].name), len(d.requests.history[-1].reason)]") == [200, 2000]
    for ops in ("x", [1, None, {"k": 5}], [{"k": "call", "o": "s990002", "p": 7}]):
        send(d, {"t": "ops", "ops": ops})
    assert (
        call(d, {"t": "meta", "o": "s990002"})["kind"] == "ProtocolError"
    )  # the bad call, kept as its result
    on_loop(
        d.channel._dc.send, b"\x03\x00\x00\x00\x00not a frame"
    )  # below the channel's framing: dropped, reported


def test_unknown_message_types(mallory: tuple[Peer, Duet, str]) -> None:
    owner, d, ages = mallory
    for header in ({"t": "nope"}, {"t": 5}, {}, {"t": "value"}, {"t": "welcome"}, {"t": "x" * 10_000}):
        reply = call(d, header)
        assert (reply["t"], reply["kind"]) == ("error", "ProtocolError"), header
    assert call(d, {"t": "hello"})["t"] == "welcome"  # saying hello again changes nothing


def test_request_flood(mallory: tuple[Peer, Duet, str]) -> None:
    owner, d, ages = mallory
    x = d.store["ages"]
    owner.run("panel = d.requests.widget()")  # open: it must not slow the owner down under a flood
    # 2,000 different blocking requests: the queue holds what it may (1,000) and refuses the rest at once
    replies = send_all(d, [{"t": "req", "o": ages, "name": f"flood{i}", "block": True} for i in range(2000)])
    assert ask(owner, "[len(d.requests), len(panel.rows), '1000 pending' in panel.header.value]") == [
        1000,
        50,
        True,
    ]
    assert x.sum().get(name="legit") == 15.0  # served while the queue is full: its handler decides at once
    owner.run("for r in list(d.requests): r.deny('flood')")  # the owner clears the queue
    assert collections.Counter(map(_outcome, replies.result(30))) == {"denied": 1000, "QuotaExceeded": 1000}
    # identical blocking requests are one request, with a bounded number of waiters
    replies = send_all(d, [{"t": "req", "o": ages, "name": "same", "block": True}] * 300)
    assert ask(owner, "len(d.requests)") == 1
    owner.run("d.requests[0].deny('no')")
    assert collections.Counter(map(_outcome, replies.result(30))) == {"denied": 64, "QuotaExceeded": 236}
    # requests without request_block never wait: each is denied at once
    replies = send_all(d, [{"t": "req", "o": ages, "name": f"nb{i}"} for i in range(500)])
    assert collections.Counter(map(_outcome, replies.result(30))) == {"denied": 500}
    assert ask(owner, "[len(d.requests), len(panel.rows)]") == [0, 0]
    owner.run("panel.close()")
    # and a session has a quota of requests in all (each one is kept on record)
    owner.run("import dataclasses\nd.store.quotas = dataclasses.replace(d.store.quotas, requests=0)")
    try:
        reply = call(d, {"t": "req", "o": ages, "name": "legit"})
        assert (reply["t"], reply["kind"]) == ("error", "QuotaExceeded")
    finally:
        owner.run("d.store.quotas = dataclasses.replace(d.store.quotas, requests=100_000)")


def _outcome(reply: Any) -> str:
    if isinstance(reply, BaseException):
        return type(reply).__name__
    return str(reply.get("status") if reply.get("t") == "value" else reply.get("kind"))
