"""duet as a user drives it: this process is the scientist, an owner process serves one session after another."""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

import torch

import duet
from duet import codec, wire

from .owner import HANDLER_NAME, owner_peer
from .procs import Child

__all__ = ["DuetSide", "BigModel", "frame_size", "get", "op_message_size"]

_PART_HEADER = 5  # duet's per-message part header (flags + stream id), see duet/transport.py


def frame_size(header: dict[str, Any], buffers: list[Any] | None = None) -> int:
    """Bytes on the data channel of one small duet frame (frame + part header)."""
    return len(wire.pack(header, buffers or [])) + _PART_HEADER


def op_message_size() -> int:
    """Bytes on the data channel of one ``y = y + 1`` call sent alone."""
    buffers: list[Any] = []
    op = {"k": "meth", "s": "s10000", "n": "__add__", "a": codec.encode([1], buffers), "o": "s10001"}
    return frame_size({"t": "ops", "ops": [op]}, buffers)


class BigModel(duet.Module):
    """One ``n`` x ``n`` linear layer: ``4 n (n + 1)`` bytes of weights."""

    def __init__(self, torch_ref: Any, n: int) -> None:
        super().__init__(torch_ref)
        self.fc = self.torch_ref.nn.Linear(n, n)

    def forward(self, x: Any) -> Any:
        return self.fc(x)


def get(ptr: Any, timeout: float = 300) -> Any:
    """A blocking get that the owner's ``bench`` handler accepts (raises if it is not)."""
    return ptr.get(request_block=True, name=HANDLER_NAME, timeout_secs=timeout, strict=True)


class DuetSide:
    """The scientist's end. Use as a context manager: the session and the owner process are always closed."""

    def __init__(self) -> None:
        logging.getLogger("duet").setLevel(logging.ERROR)  # "session ended" notices are expected here
        self.owner = Child(owner_peer, name="bench-owner")
        self.url = ""
        self._s: duet.Duet | None = None

    @property
    def s(self) -> duet.Duet:
        if self._s is None:
            raise RuntimeError("no duet session: connect() first")
        return self._s

    def start(self) -> None:
        self.url = self.owner.call("server", timeout=60)

    def connect(self) -> tuple[float, float]:
        """A new session (closing the last). Returns (launch_duet -> join_duet returned, join_duet alone) in
        seconds, both on the monotonic clock the two processes share."""
        self.disconnect()
        session_id, started = self.owner.call("launch", timeout=60)
        join_start = time.monotonic()
        self._s = duet.join_duet(session_id, signaling_url=self.url, timeout=60, name="bench-scientist")
        done = time.monotonic()
        self.owner.call("wait_peer", timeout=60)
        return done - started, done - join_start

    def disconnect(self) -> None:
        if self._s is not None:
            s, self._s = self._s, None
            s.close()
            self.owner.call("close", timeout=30)

    def stats(self) -> dict[str, int]:
        return dict(self.owner.call("stats"))

    # ---- scenarios' building blocks ---------------------------------------------------------------------

    def timed_gets(self, ptr: Any, n: int) -> list[float]:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            get(ptr)
            times.append(time.perf_counter() - start)
        return times

    def pings(self, n: int) -> list[float]:
        return [self.s.ping() for _ in range(n)]

    def chain(self, ptr: Any, n: int) -> tuple[float, float]:
        """``y = y + 1`` ``n`` times from ``ptr``, then a get of ``y``: (seconds in all, seconds to queue)."""
        start = time.perf_counter()
        y = ptr
        for _ in range(n):
            y = y + 1
        queued = time.perf_counter() - start
        value = get(y)
        elapsed = time.perf_counter() - start
        expected = float(get(ptr).item()) + n
        if float(value.item()) != expected:
            raise RuntimeError(f"pipelined calls: got {value.item()}, expected {expected}")
        return elapsed, queued

    def get_tensor(self, ptr: Any, nbytes: int) -> float:
        start = time.perf_counter()
        value = get(ptr)
        elapsed = time.perf_counter() - start
        if value.numel() * value.element_size() != nbytes:
            raise RuntimeError(f"bulk get: {value.numel() * value.element_size()} bytes, expected {nbytes}")
        return elapsed

    def send_model(self, local: BigModel) -> float:
        """``local.send(d)`` until the owner holds the model: the ``len`` is a blocking call the owner answers
        only after every call before it."""
        start = time.perf_counter()
        remote = local.send(self.s)
        len(remote.parameters())
        return time.perf_counter() - start

    @staticmethod
    def big_model(nbytes: int) -> BigModel:
        return BigModel(torch, math.isqrt(nbytes // 4))

    def close(self) -> None:
        """Close the session (a failure is reported, not raised over the run's own error); stop the owner."""
        try:
            self.disconnect()
        except Exception as exc:  # noqa: BLE001 - cleanup must reach the owner process
            print(f"bench: closing the duet session failed: {exc!r}", file=sys.stderr)
        finally:
            self.owner.close()

    def __enter__(self) -> DuetSide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
