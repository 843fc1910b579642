"""The UDP socket a connection settles on gets wider kernel buffers once the data channel opens."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aioice.turn
import pytest
from aiortc import RTCPeerConnection

from duet import connect, ice


def _limit(name: str) -> int:
    try:
        return int(Path(f"/proc/sys/net/core/{name}").read_text())
    except OSError:
        return 0


async def _pair() -> tuple[RTCPeerConnection, RTCPeerConnection, asyncio.Future[Any]]:
    ice.install()
    a = RTCPeerConnection(connect.ice_configuration(None))
    b = RTCPeerConnection(connect.ice_configuration(None))
    opened: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    dc = a.createDataChannel(connect.LABEL)
    dc.once("open", lambda: opened.done() or opened.set_result(dc))
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    return a, b, opened


def _buffers(pc: RTCPeerConnection) -> list[tuple[int, int]]:
    return [
        (s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
        for s in ice._nominated_sockets(pc)
    ]


@pytest.mark.skipif(_limit("rmem_max") < 1 << 20, reason="net.core.rmem_max is below 1 MB here")
def test_open_widens_the_nominated_socket_buffers() -> None:
    async def go() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        a, b, opened = await _pair()
        try:
            await connect._wait_open(a, opened, timeout=20)  # what offer/answer do once the peer is there
            after = _buffers(a)
            return after, _buffers(b)
        finally:
            await a.close()
            await b.close()

    after, untouched = asyncio.run(go())
    assert len(after) == 1, "aioice no longer exposes the nominated pair: ice.widen_buffers does nothing"
    expect_rcv = min(ice.SOCKET_BUFFER, _limit("rmem_max"))
    expect_snd = min(ice.SOCKET_BUFFER, _limit("wmem_max"))
    rcv, snd = after[0]
    assert rcv >= expect_rcv > aioice.turn.UDP_SOCKET_BUFFER_SIZE  # Linux reports twice what it granted
    assert snd >= expect_snd
    assert untouched and untouched[0][0] < rcv  # the other peer's socket is its own business


def test_widen_buffers_leaves_unknown_shapes_and_versions_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    class Bare:
        sctp = None

    assert ice.widen_buffers(Bare()) == []
    monkeypatch.setattr(ice.aioice, "__version__", "9.0.0")
    assert ice._nominated_sockets(object()) == []
