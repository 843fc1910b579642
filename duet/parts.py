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

from . import wire
from .errors import ProtocolError

__all__ = ["DEFAULT_MAX_FRAME", "MAX_PARTIAL", "Outgoing", "Progress", "Reassembly"]

_PART = struct.Struct(">BI")
_FIRST, _LAST = 1, 2
_SINGLE = _PART.pack(_FIRST | _LAST, 0)  # the part header of a frame that fits one message
DEFAULT_MAX_FRAME = 1 << 30  # 1 GiB: the largest frame a peer may send us
MAX_PARTIAL = 64  # frames being reassembled at once

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


class Reassembly:
    """The frames arriving in parts: at most :data:`MAX_PARTIAL` at once, none over ``max_frame`` bytes, and
    all of them together not over ``max_frame`` bytes either (so interleaved frames cannot multiply it)."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._max_frame = max_frame
        self._partial: dict[int, bytearray] = {}
        self._held = 0  # bytes in all the frames being reassembled

    def __len__(self) -> int:
        return len(self._partial)

    def add(self, flags: int, stream: int, body: memoryview) -> tuple[int, memoryview | None]:
        """Take one part (not a whole frame): (bytes of its frame so far, the frame if this part completed
        it). Raises ProtocolError, forgetting the frame, on a part that breaks the limits or the order."""
        if flags & _FIRST:
            if stream in self._partial or len(self._partial) >= MAX_PARTIAL:
                self._forget(stream)
                raise ProtocolError("too many interleaved frames, or a frame restarted")
            if self._held + len(body) > self._max_frame:
                raise ProtocolError(f"frames in parts holding more than {self._max_frame} bytes together")
            self._partial[stream] = bytearray(body)
            self._held += len(body)
            return len(body), None
        buf = self._partial.get(stream)
        if buf is None:
            raise ProtocolError("a frame part with no start")
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
            self._held -= len(buf)
