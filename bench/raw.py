"""Bare aiortc and bare asyncio TCP, no duet: the peer processes, and the async clients that time them.

The peer process (spawned) answers a tiny protocol whose first byte says what to do with a message:
``E`` echo it back; ``C`` count it; ``A`` answer with the count so far (an ack, after a one-way burst);
``S`` + (total, size) send ``total`` bytes back as ``size``-byte ``D`` messages, then an ``F``. TCP uses
the same kinds, each framed as kind (1 byte) + length (u32) + body.
"""

from __future__ import annotations

import asyncio
import re
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from duet.ice import widen_buffers

from .procs import Child, serve_commands

__all__ = ["RawRtc", "RawTcp", "LoopThread", "rtc_peer", "tcp_peer"]

HIGH_WATER = 1 << 20  # the same backpressure marks as duet's Channel
LOW_WATER = 256 * 1024
_SEND = struct.Struct(">QI")
_COUNT = struct.Struct(">QQ")
_FRAME = struct.Struct(">cI")


def _config() -> RTCConfiguration:
    return RTCConfiguration(iceServers=[])  # aiortc's default would contact a public STUN server


def _install_ice_fallback() -> None:
    """The same candidates as duet: on a host with no network, duet offers 127.0.0.1 (see duet/ice.py)."""
    import aioice.ice

    if not aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True):
        from duet import ice  # imported only then: it pulls in duet and torch

        ice.install()


# ---- the peer process ------------------------------------------------------------------------------


class LoopThread:
    """An asyncio loop on its own daemon thread; ``run`` hands it a coroutine and waits for the result."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name=name, daemon=True).start()

    def run(self, coro: Any, timeout: float = 120.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def _parts(total: int, size: int) -> list[int]:
    """The sizes of the messages that carry ``total`` bytes, ``size`` bytes at most each."""
    return [size] * (total // size) + ([total % size] if total % size else [])


async def _stream_back(
    send: Callable[[bytes], None], wait_low: Callable[[], Any], total: int, size: int
) -> None:
    chunk = b"D" + bytes(size - 1)
    for n in _parts(total, size):
        send(chunk if n == size else chunk[:n])
        await wait_low()
    send(b"F")


def rtc_peer(conn: Any) -> None:
    """(peer process) Answer offers; serve the data-channel protocol on every channel that opens."""
    _install_ice_fallback()
    rt = LoopThread("bench-peer-loop")
    pcs: list[RTCPeerConnection] = []

    def on_channel(dc: Any) -> None:
        for pc in pcs:  # the socket buffers duet's transport asks for once open, so both run alike
            widen_buffers(pc)
        count = [0, 0]
        low = asyncio.Event()
        dc.bufferedAmountLowThreshold = LOW_WATER
        dc.on("bufferedamountlow", low.set)

        async def wait_low() -> None:
            if dc.bufferedAmount > HIGH_WATER:
                low.clear()
                await low.wait()

        def on_message(data: bytes) -> None:
            kind = data[:1]
            if kind == b"E":
                dc.send(data)
            elif kind == b"C":
                count[0] += 1
                count[1] += len(data)
            elif kind == b"A":
                dc.send(b"A" + _COUNT.pack(*count))
                count[0] = count[1] = 0
            elif kind == b"S":
                total, size = _SEND.unpack_from(data, 1)
                asyncio.ensure_future(_stream_back(dc.send, wait_low, total, size))

        dc.on("message", on_message)

    async def answer(sdp: str) -> str:
        for old in pcs:
            await old.close()
        pcs.clear()
        pc = RTCPeerConnection(_config())
        pcs.append(pc)
        pc.on("datachannel", on_channel)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp

    async def close_all() -> None:
        for pc in pcs:
            await pc.close()
        pcs.clear()

    try:
        serve_commands(
            conn, {"answer": lambda sdp: rt.run(answer(sdp)), "close": lambda: rt.run(close_all())}
        )
    finally:
        rt.run(close_all(), timeout=10)


def tcp_peer(conn: Any) -> None:
    """(peer process) A TCP server on 127.0.0.1, port chosen by the OS, serving the same protocol."""
    rt = LoopThread("bench-peer-loop")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        count = [0, 0]
        try:
            while True:
                kind, n = _FRAME.unpack(await reader.readexactly(_FRAME.size))
                body = await reader.readexactly(n)
                if kind == b"E":
                    writer.write(_FRAME.pack(kind, n) + body)
                elif kind == b"C":
                    count[0] += 1
                    count[1] += n + _FRAME.size
                elif kind == b"A":
                    writer.write(_FRAME.pack(b"A", _COUNT.size) + _COUNT.pack(*count))
                    count[0] = count[1] = 0
                elif kind == b"S":
                    total, size = _SEND.unpack(body)
                    for n in _parts(total, size):
                        writer.write(_FRAME.pack(b"D", n) + bytes(n))
                        await writer.drain()
                    writer.write(_FRAME.pack(b"F", 0))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def start() -> int:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    servers: list[asyncio.Server] = []
    serve_commands(conn, {"start": lambda: rt.run(start())})


# ---- the measuring side (in the benchmark's process, on a loop of its own) ---------------------------


class RawRtc:
    """This process's end of a bare aiortc data channel to an :func:`rtc_peer`."""

    def __init__(self, peer: Child) -> None:
        self.peer = peer
        self.pc: RTCPeerConnection | None = None
        self.dc: Any = None
        self.max_message = 65536
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._low = asyncio.Event()
        self._received = 0
        self._finished: asyncio.Future[None] | None = None

    async def connect(self) -> float:
        """A fresh connection; returns seconds from ``RTCPeerConnection()`` to the channel being open."""
        _install_ice_fallback()
        await self.close()
        start = time.perf_counter()
        pc = self.pc = RTCPeerConnection(_config())
        dc = self.dc = pc.createDataChannel("bench", ordered=True)
        opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        @dc.on("open")
        def on_open() -> None:
            if not opened.done():
                opened.set_result(None)

        dc.on("message", self._on_message)
        dc.bufferedAmountLowThreshold = LOW_WATER
        dc.on("bufferedamountlow", self._low.set)
        await pc.setLocalDescription(await pc.createOffer())
        sdp = await asyncio.get_running_loop().run_in_executor(
            None, self.peer.call, "answer", pc.localDescription.sdp
        )
        found = re.search(r"^a=max-message-size:(\d+)", sdp, re.MULTILINE)
        self.max_message = int(found.group(1)) if found and int(found.group(1)) else 65536
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        await asyncio.wait_for(opened, 30)
        widen_buffers(pc)  # as duet's transport does once open
        return time.perf_counter() - start

    def _on_message(self, data: bytes) -> None:
        if data[:1] == b"D":
            self._received += len(data)
        elif data[:1] == b"F" and self._finished is not None and not self._finished.done():
            self._finished.set_result(None)
        else:
            self._inbox.put_nowait(data)

    async def _wait_low(self) -> None:
        if self.dc.bufferedAmount > HIGH_WATER:
            self._low.clear()
            await self._low.wait()

    async def echo(self, n: int, size: int) -> list[float]:
        """``n`` round trips of a ``size``-byte message; seconds each."""
        payload = b"E" + bytes(size - 1)
        times = []
        for _ in range(n):
            start = time.perf_counter()
            self.dc.send(payload)
            await asyncio.wait_for(self._inbox.get(), 30)
            times.append(time.perf_counter() - start)
        return times

    async def one_way(self, n: int, size: int) -> tuple[float, int]:
        """``n`` messages of ``size`` bytes one way, then an ack; returns (seconds, messages the peer counted)."""
        payload = b"C" + bytes(size - 1)
        start = time.perf_counter()
        for _ in range(n):
            self.dc.send(payload)
            await self._wait_low()
        self.dc.send(b"A")
        reply = await asyncio.wait_for(self._inbox.get(), 120)
        elapsed = time.perf_counter() - start
        return elapsed, _COUNT.unpack_from(reply, 1)[0]

    async def push(self, total: int, size: int) -> float:
        """Seconds to send ``total`` bytes in ``size``-byte messages and have the peer acknowledge them all."""
        chunk = b"C" + bytes(size - 1)
        start = time.perf_counter()
        for n in _parts(total, size):
            self.dc.send(chunk if n == size else chunk[:n])
            await self._wait_low()
        self.dc.send(b"A")
        reply = await asyncio.wait_for(self._inbox.get(), 300)
        elapsed = time.perf_counter() - start
        counted = _COUNT.unpack_from(reply, 1)[1]
        if counted != total:
            raise RuntimeError(f"raw aiortc push: the peer counted {counted} of {total} bytes")
        return elapsed

    async def pull(self, total: int, size: int) -> float:
        """Seconds for the peer to send us ``total`` bytes in ``size``-byte messages."""
        self._received = 0
        self._finished = asyncio.get_running_loop().create_future()
        start = time.perf_counter()
        self.dc.send(b"S" + _SEND.pack(total, size))
        await asyncio.wait_for(self._finished, 300)
        elapsed = time.perf_counter() - start
        if self._received != total:
            raise RuntimeError(f"raw aiortc pull: received {self._received} of {total} bytes")
        return elapsed

    async def close(self) -> None:
        if self.pc is not None:
            await self.pc.close()
            self.pc = self.dc = None


class RawTcp:
    """This process's end of a TCP connection to a :func:`tcp_peer`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def _read(self) -> tuple[bytes, bytes]:
        assert self.reader is not None
        kind, n = _FRAME.unpack(await self.reader.readexactly(_FRAME.size))
        return kind, await self.reader.readexactly(n)

    async def echo(self, n: int, size: int) -> list[float]:
        assert self.writer is not None
        frame = _FRAME.pack(b"E", size - _FRAME.size) + bytes(size - _FRAME.size)
        times = []
        for _ in range(n):
            start = time.perf_counter()
            self.writer.write(frame)
            await self._read()
            times.append(time.perf_counter() - start)
        return times

    async def push(self, total: int, size: int) -> float:
        """Seconds to push ``total`` bytes in frames of ``size`` bytes at most and have the peer acknowledge them."""
        assert self.writer is not None
        start = time.perf_counter()
        for n in _parts(total, size):
            self.writer.write(_FRAME.pack(b"C", n) + bytes(n))
            await self.writer.drain()
        self.writer.write(_FRAME.pack(b"A", 0))
        await self._read()
        return time.perf_counter() - start

    async def pull(self, total: int, size: int) -> float:
        assert self.writer is not None
        start = time.perf_counter()
        self.writer.write(_FRAME.pack(b"S", _SEND.size) + _SEND.pack(total, size))
        received = 0
        while True:
            kind, body = await self._read()
            if kind == b"F":
                break
            received += len(body)
        elapsed = time.perf_counter() - start
        if received != total:
            raise RuntimeError(f"raw TCP pull: received {received} of {total} bytes")
        return elapsed

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()
