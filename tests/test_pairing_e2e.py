"""End to end: an owner process and a scientist (this process) over the real server and real aiortc."""

from __future__ import annotations

import os
import time

import pytest
from conftest import Peer

import duet
from duet import loop
from duet.signaling.client import SignalingClient
from duet.signaling.codes import lookup_key, new_session_id


def test_pairing_messages_and_close_from_scientist(owner_process: Peer, signaling_url: str) -> None:
    start = time.monotonic()
    d = duet.join_duet(owner_process.session_id, signaling_url=signaling_url, name="alice")
    assert time.monotonic() - start < 10
    assert d.status == "connected"
    owner_process.send("wait-peer")
    name, fp, status = owner_process.expect("CONNECTED")[1:]
    assert (name, status) == ("alice", "connected")
    assert fp == d.identity.fingerprint
    assert d.peer is not None and d.peer.name == "hospital"
    assert "connected" in repr(d) and "hospital" in repr(d)
    # messages both ways: the scientist echoes through the owner, the owner through the scientist
    assert d.echo(b"hello") == b"hello"
    payload = os.urandom(6 << 20)
    assert d.echo(payload) == payload
    owner_process.send(f"echo {5 << 20}")
    assert owner_process.expect("ECHO")[1] == "True"
    assert d.ping() < 1.0
    # closing from the scientist's side is seen by the owner
    owner_process.send("wait-closed 20")
    d.close()
    d.close()  # idempotent
    assert d.status == "closed"
    words = owner_process.expect("CLOSED")
    assert words[1] == "True"
    assert "peer closed the session" in " ".join(words[3:])


def test_close_from_owner_is_seen_by_scientist(owner_process: Peer, signaling_url: str) -> None:
    with duet.join_duet(owner_process.session_id, signaling_url=signaling_url) as d:
        owner_process.send("wait-peer")
        owner_process.expect("CONNECTED")
        owner_process.send("close")
        owner_process.expect("CLOSED")
        assert d.wait_closed(timeout=10)
        assert d.status == "closed"
        assert "peer closed" in d.close_reason
        with pytest.raises(duet.ConnectionError):
            d.echo(b"x")


def test_killed_owner_is_detected_within_10s(owner_process: Peer, signaling_url: str) -> None:
    d = duet.join_duet(owner_process.session_id, signaling_url=signaling_url)
    owner_process.send("wait-peer")
    owner_process.expect("CONNECTED")
    owner_process.kill()
    start = time.monotonic()
    assert d.wait_closed(timeout=10)
    assert time.monotonic() - start < 10
    with pytest.raises(duet.ConnectionError):
        d.ping()


def test_killed_scientist_is_detected_by_owner_within_10s(signaling_url: str) -> None:
    owner = Peer("owner.py", "--url", signaling_url)
    try:
        sid = owner.expect("SESSION")[1]
        sci = Peer("scientist.py", "--url", signaling_url, "--session", sid)
        try:
            sci.expect("JOINED")
            owner.send("wait-peer")
            owner.expect("CONNECTED")
            owner.send("wait-closed 15")
            sci.kill()
            closed, seconds = owner.expect("CLOSED", 20)[1:3]
            assert closed == "True"
            assert float(seconds) < 10
        finally:
            sci.close()
    finally:
        owner.close()


def test_second_join_fails_fast(owner_process: Peer, signaling_url: str) -> None:
    d = duet.join_duet(owner_process.session_id, signaling_url=signaling_url)
    try:
        start = time.monotonic()
        with pytest.raises(duet.SignalingError, match="already used"):
            duet.join_duet(owner_process.session_id, signaling_url=signaling_url, timeout=20)
        assert time.monotonic() - start < 3
    finally:
        d.close()


def test_wrong_and_mistyped_ids_fail_fast(signaling_url: str) -> None:
    start = time.monotonic()
    with pytest.raises(duet.SignalingError, match="no session"):
        duet.join_duet(new_session_id(), signaling_url=signaling_url, timeout=20)
    good = new_session_id()
    typo = good[:-1] + ("a" if good[-1] != "a" else "b")
    with pytest.raises(duet.SignalingError):
        duet.join_duet(typo, signaling_url=signaling_url, timeout=20)
    assert time.monotonic() - start < 3


def test_expired_id_fails_fast() -> None:
    from duet.signaling.server import start_server

    now = [1000.0]  # the server's clock, moved by hand: the ID expires without waiting for it
    runner, port = loop.run(start_server("127.0.0.1", 0, ttl=60, clock=lambda: now[0]), timeout=10)
    url = f"http://127.0.0.1:{port}"
    try:
        sid = new_session_id()

        async def create() -> None:
            client = SignalingClient(url)
            await client.create(lookup_key(sid), "x" * 40)
            await client.close()

        loop.run(create(), timeout=10)
        now[0] += 61
        start = time.monotonic()
        with pytest.raises(duet.SignalingError, match="expired"):
            duet.join_duet(sid, signaling_url=url, timeout=20)
        assert time.monotonic() - start < 3
    finally:
        loop.run(runner.cleanup(), timeout=10)


def test_the_server_cannot_read_what_it_relays(monkeypatch: pytest.MonkeyPatch, signaling_url: str) -> None:
    """Everything the server stores during a real pairing is sealed: no SDP, address or fingerprint in it."""
    from duet.signaling import server

    stored: list[str] = []
    create, post = server.Registry.create, server.Registry.post_answer

    def record_create(self: server.Registry, key: str, offer: str, client: str) -> None:
        stored.extend([key, offer])
        create(self, key, offer, client)

    def record_answer(self: server.Registry, pairing: server.Pairing, answer: str) -> None:
        stored.append(answer)
        post(self, pairing, answer)

    monkeypatch.setattr(server.Registry, "create", record_create)
    monkeypatch.setattr(server.Registry, "post_answer", record_answer)
    owner = duet.launch_duet(signaling_url=signaling_url, quiet=True, name="ward-3")
    try:
        sci = duet.join_duet(owner.session_id, signaling_url=signaling_url, name="alice")
        owner.wait_for_peer(timeout=10)
        assert len(stored) == 3
        blob = " ".join(stored)
        for secret in (
            "a=fingerprint",
            "candidate",
            "127.0.0.1",
            "ice-ufrag",
            "ward-3",
            "alice",
            owner.session_id,
        ):
            assert secret not in blob
        assert owner.identity.fingerprint not in blob and sci.identity.fingerprint not in blob
        assert sci.peer is not None and sci.peer.fingerprint == owner.identity.fingerprint
        sci.close()
    finally:
        owner.close()
