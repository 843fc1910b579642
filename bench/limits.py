"""The limits, measured alongside duet: a bare aiortc data channel and a bare TCP socket to peer processes."""

from __future__ import annotations

import contextlib

from .procs import Child
from .raw import LoopThread, RawRtc, RawTcp, rtc_peer, tcp_peer

__all__ = ["Limits"]


class Limits:
    """Synchronous handles on the two bare connections; each figure is timed inside their own event loop,
    so no thread hop is counted. Use as a context manager: the peer processes are always stopped."""

    def __init__(self) -> None:
        self._loop = LoopThread("bench-raw-loop")
        self._rtc_peer = Child(rtc_peer, name="bench-raw-aiortc")
        self._tcp_peer = Child(tcp_peer, name="bench-raw-tcp")
        self.rtc = RawRtc(self._rtc_peer)
        self.tcp = RawTcp(0)

    def start(self) -> None:
        self.tcp.port = self._tcp_peer.call("start", timeout=60)
        self._loop.run(self.tcp.connect())
        self.connect()  # warm-up: imports and first use of DTLS on both sides

    @property
    def message_size(self) -> int:
        """The data channel's message size (the peer's max-message-size): duet cuts frames to it too."""
        return self.rtc.max_message

    def connect(self) -> float:
        """A new aiortc connection (replacing the last); seconds from RTCPeerConnection() to an open channel."""
        return float(self._loop.run(self.rtc.connect()))

    def echo(self, n: int, size: int) -> list[float]:
        return list(self._loop.run(self.rtc.echo(n, size)))

    def tcp_echo(self, n: int, size: int) -> list[float]:
        return list(self._loop.run(self.tcp.echo(n, size)))

    def rate(self, n: int, size: int) -> float:
        """Messages per second: ``n`` messages of ``size`` bytes one way, until the peer acknowledges them."""
        seconds, counted = self._loop.run(self.rtc.one_way(n, size), timeout=300)
        if counted != n:
            raise RuntimeError(f"raw aiortc: the peer counted {counted} of {n} messages")
        return float(n / seconds)

    def pull(self, total: int) -> float:
        """Seconds for the aiortc peer to send us ``total`` bytes (the direction of a get)."""
        return float(self._loop.run(self.rtc.pull(total, self.message_size), timeout=300))

    def push(self, total: int) -> float:
        """Seconds to send ``total`` bytes to the aiortc peer (the direction of a send)."""
        return float(self._loop.run(self.rtc.push(total, self.message_size), timeout=300))

    def tcp_pull(self, total: int) -> float:
        return float(self._loop.run(self.tcp.pull(total, self.message_size), timeout=300))

    def tcp_push(self, total: int) -> float:
        return float(self._loop.run(self.tcp.push(total, self.message_size), timeout=300))

    def close(self) -> None:
        """Best effort for the connections (the run may be failing already); the processes always stop."""
        try:
            with contextlib.suppress(Exception):
                self._loop.run(self.rtc.close(), timeout=10)
            with contextlib.suppress(Exception):
                self._loop.run(self.tcp.close(), timeout=10)
        finally:
            self._rtc_peer.close()
            self._tcp_peer.close()
            self._loop.stop()

    def __enter__(self) -> Limits:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
