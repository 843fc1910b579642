"""Frames cut into data-channel messages and put back together. Pure code, no I/O.

Every duet frame (see :mod:`duet.wire`) travels in messages no larger than the peer accepts::

     0       1               5
     +-------+---------------+---------------------------+
     | flags | stream (u32)  | part of the frame          |
     +-------+---------------+---------------------------+
     flags: bit 0 = first part of a frame, bit 1 = last part

A frame that fits one message has both bits and stream 0. The parts of larger frames carry the stream
number their sender gave the frame, so several can be interleaved; the receiver bounds how many it
reassembles at once and how large each may grow.
"""

from __future__ import annotations

import collections
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from . import wire
from .errors import ProtocolError

__all__ = ["ALIGN", "DEFAULT_MAX_FRAME", "FrameBuffer", "MAX_PARTIAL", "Outgoing", "Progress", "Reassembly"]

_PART = struct.Struct(">BI")
_FIRST, _LAST = 1, 2
_SINGLE = _PART.pack(_FIRST | _LAST, 0)  # the part header of a frame that fits one message
DEFAULT_MAX_FRAME = 1 << 30  # 1 GiB: the largest frame a peer may send us
MAX_PARTIAL = 64  # frames being reassembled at once
ALIGN = 64  # where a reassembled frame's first buffer starts (a multiple of this address)

Progress = Callable[[int, int], None]


class Outgoing:
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
            self._progress(self.size - self._left, self.size)
        return b"".join(pieces)


class FrameBuffer(np.ndarray):
    """The memory of a frame put together from parts, laid out from what its first part declares: its first
    buffer starts at a multiple of :data:`ALIGN`. The codec may decode a large tensor in place from such a
    frame instead of copying it (see :func:`duet.codec.decode`); ``aliased`` holds the offsets of the
    buffers it has, so that no two tensors share one."""

    aliased: set[int]


class _Laid:
    """A frame being reassembled into memory of its declared size."""

    __slots__ = ("frame", "filled")

    def __init__(self, frame: FrameBuffer, filled: int) -> None:
        self.frame, self.filled = frame, filled


def _lay_out(total: int, first_buffer: int) -> FrameBuffer:
    raw = np.empty(total + ALIGN, np.uint8)  # (pages are touched only as the parts are copied in)
    skip = -(raw.ctypes.data + first_buffer) % ALIGN
    frame = raw[skip : skip + total].view(FrameBuffer)
    frame.aliased = set()
    return frame


class Reassembly:
    """The frames arriving in parts: at most :data:`MAX_PARTIAL` at once, none over ``max_frame`` bytes, and
    all of them together not over ``max_frame`` bytes either (so interleaved frames cannot multiply it).

    A frame whose first part holds its fixed part and buffer table is put together in memory of the size
    they declare (a :class:`FrameBuffer`), which counts in full against the limits from that first part; a
    part that goes past the declared size, or a last part that stops short of it, is refused. Other frames
    grow part by part."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._max_frame = max_frame
        self._partial: dict[int, Any] = {}  # stream -> bytearray, or _Laid
        self._held = 0  # bytes in all the frames being reassembled (a laid-out frame: its declared size)

    def __len__(self) -> int:
        return len(self._partial)

    def add(self, flags: int, stream: int, body: memoryview) -> tuple[int, memoryview | None]:
        """Take one part (not a whole frame): (bytes of its frame so far, the frame if this part completed
        it). Raises ProtocolError, forgetting the frame, on a part that breaks the limits or the order."""
        if flags & _FIRST:
            if stream in self._partial or len(self._partial) >= MAX_PARTIAL:
                self._forget(stream)
                raise ProtocolError("too many interleaved frames, or a frame restarted")
            shape = wire.layout(body)
            if shape is not None and shape[0] > len(body):
                total = shape[0]
                if total > self._max_frame:
                    raise ProtocolError(f"a frame larger than {self._max_frame} bytes")
                if self._held + total > self._max_frame:
                    raise ProtocolError(f"frames in parts holding more than {self._max_frame} bytes together")
                frame = _lay_out(total, shape[1])
                frame[: len(body)] = np.frombuffer(body, np.uint8)
                self._partial[stream] = _Laid(frame, len(body))
                self._held += total
                return len(body), None
            if self._held + len(body) > self._max_frame:
                raise ProtocolError(f"frames in parts holding more than {self._max_frame} bytes together")
            self._partial[stream] = bytearray(body)
            self._held += len(body)
            return len(body), None
        buf = self._partial.get(stream)
        if buf is None:
            raise ProtocolError("a frame part with no start")
        if type(buf) is _Laid:
            start, frame = buf.filled, buf.frame
            end = start + len(body)
            if end > len(frame):
                self._forget(stream)
                raise ProtocolError(f"a frame part past the {len(frame)} bytes its first part declared")
            frame[start:end] = np.frombuffer(body, np.uint8)
            buf.filled = end
            if flags & _LAST:
                self._forget(stream)
                if end != len(frame):
                    raise ProtocolError(
                        f"a frame of {end} bytes, not the {len(frame)} its first part declared"
                    )
                return end, memoryview(frame)  # type: ignore[arg-type]
            return end, None
        if len(buf) + len(body) > self._max_frame:
            self._forget(stream)
            raise ProtocolError(f"a frame larger than {self._max_frame} bytes")
        if self._held + len(body) > self._max_frame:
            self._forget(stream)
            raise ProtocolError(f"frames in parts holding more than {self._max_frame} bytes together")
        buf += body
        self._held += len(body)
        if flags & _LAST:
            self._forget(stream)
            return len(buf), memoryview(buf)
        return len(buf), None

    def _forget(self, stream: int) -> None:
        buf = self._partial.pop(stream, None)
        if buf is not None:
            self._held -= len(buf.frame) if type(buf) is _Laid else len(buf)
