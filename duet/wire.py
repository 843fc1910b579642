"""Frames: the unit every duet message travels in. Pure functions, bytes in and out, no I/O.

A frame is a small msgpack header (the message: a dict of primitives) followed by zero or more raw
buffers (tensor storage), so a large tensor is never re-encoded or copied into the header::

     0       2       3       4               8              12
     +-------+-------+-------+---------------+---------------+
     | "DU"  | ver=1 | flags | header_len    | n_buffers     |   fixed part, big-endian
     +-------+-------+-------+---------------+---------------+
     | buffer_len[0] (u64) ... buffer_len[n_buffers-1] (u64) |
     +-------------------------------------------------------+
     | header (msgpack, header_len bytes)                     |
     +-------------------------------------------------------+
     | buffer 0 | buffer 1 | ...                             |
     +-------------------------------------------------------+

``unpack`` checks magic, version and every length against the data and the limits *before* it decodes
anything, and raises only :class:`~duet.errors.ProtocolError` on bad input. The header decodes to
primitives only: no msgpack extension types, string map keys, bounded size.

Flags: bit 0 (:data:`FLAG_ZLIB`) says the header is zlib-compressed; ``header_len`` is then its compressed
length. A header of :data:`COMPRESS_MIN` bytes or more is compressed (a batch of pipelined calls shrinks
about 5x: fewer data-channel packets for both peers' pure-Python SCTP to handle). Decompression stops at
:data:`MAX_HEADER` bytes, so a small frame cannot expand into a large one. Other flag bits are refused.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from typing import Any

import msgpack

from .errors import ProtocolError

__all__ = [
    "MAGIC",
    "VERSION",
    "MAX_HEADER",
    "MAX_BUFFERS",
    "FLAG_ZLIB",
    "COMPRESS_MIN",
    "pack",
    "pack_segments",
    "layout",
    "peek",
    "unpack",
]

MAGIC = b"DU"
VERSION = 2  # 2: the zlib flag
MAX_HEADER = 8 * 1024 * 1024  # bytes of header, decompressed
FLAG_ZLIB = 0x01
COMPRESS_MIN = 1024
MAX_BUFFERS = 4096
_FIXED = struct.Struct(">2sBBII")

Buffer = bytes | bytearray | memoryview


def _no_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack extension type {code} is not allowed")


def _str_keys(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    for key, value in pairs:
        if type(key) is not str:
            raise ProtocolError("message maps must have string keys")
        if type(value) is msgpack.Timestamp:
            raise ProtocolError("msgpack timestamps are not allowed")
    return dict(pairs)


def _no_timestamps(items: list[Any]) -> list[Any]:
    for item in items:
        if type(item) is msgpack.Timestamp:
            raise ProtocolError("msgpack timestamps are not allowed")
    return items


def pack_segments(header: Any, buffers: Sequence[Buffer] = ()) -> list[Buffer]:
    """Encode a frame as a list of segments (the buffers are referenced, not copied)."""
    if len(buffers) > MAX_BUFFERS:
        raise ProtocolError(f"too many buffers in one frame ({len(buffers)} > {MAX_BUFFERS})")
    try:
        head = msgpack.packb(header, use_bin_type=True, strict_types=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"message cannot be encoded: {exc}") from exc
    if len(head) > MAX_HEADER:
        raise ProtocolError(f"message header too large ({len(head)} bytes)")
    flags = 0
    if len(head) >= COMPRESS_MIN:
        head, flags = zlib.compress(head, 1), FLAG_ZLIB
    views = [memoryview(b).cast("B") if not isinstance(b, bytes) else b for b in buffers]
    lengths = struct.pack(f">{len(views)}Q", *(len(v) for v in views))
    fixed = _FIXED.pack(MAGIC, VERSION, flags, len(head), len(views))
    return [fixed + lengths + head, *views]


def pack(header: Any, buffers: Sequence[Buffer] = ()) -> bytes:
    """Encode a frame into one bytes object."""
    return b"".join(pack_segments(header, buffers))


def _table(view: memoryview) -> tuple[int, int, int, tuple[int, ...]] | None:
    """(flags, header length, offset of the header, buffer lengths) from a frame's first bytes, or None if
    they do not hold its fixed part and buffer table (or these are not a frame's)."""
    if len(view) < _FIXED.size:
        return None
    magic, version, flags, head_len, n_buf = _FIXED.unpack_from(view, 0)
    if magic != MAGIC or version != VERSION or head_len > MAX_HEADER or n_buf > MAX_BUFFERS:
        return None
    if flags & ~FLAG_ZLIB:
        return None
    pos = _FIXED.size + 8 * n_buf
    if len(view) < pos:
        return None
    return flags, head_len, pos, struct.unpack_from(f">{n_buf}Q", view, _FIXED.size)


def peek(start: Buffer) -> tuple[Any, int] | None:
    """The header and total size of a frame from its first bytes, or None if they do not hold the header.

    For progress reporting only: the frame is checked in full by :func:`unpack` once it has arrived.
    """
    view = memoryview(start).cast("B")
    table = _table(view)
    if table is None:
        return None
    flags, head_len, pos, lengths = table
    if len(view) < pos + head_len:
        return None
    try:
        header = _decode_header(view[pos : pos + head_len], flags)
    except ProtocolError:
        return None
    return header, pos + head_len + sum(lengths)


def layout(start: Buffer) -> tuple[int, int] | None:
    """(total size, offset of the first buffer) of a frame from its first bytes, or None if they do not
    hold its fixed part and buffer table (or these are not a frame's). Read from the peer's claims, for
    laying out the frame's memory only: :func:`unpack` checks the frame once it has arrived."""
    table = _table(memoryview(start).cast("B"))
    if table is None:
        return None
    _, head_len, pos, lengths = table
    return pos + head_len + sum(lengths), pos + head_len


def _inflate(data: memoryview | bytes) -> bytes:
    """A compressed header, decompressed to at most MAX_HEADER bytes (never more, whatever it claims)."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_HEADER)
    except zlib.error as exc:
        raise ProtocolError(f"malformed compressed frame header: {exc}") from exc
    if inflater.unconsumed_tail:
        raise ProtocolError(f"compressed frame header expands beyond {MAX_HEADER} bytes")
    if not inflater.eof or inflater.unused_data:
        raise ProtocolError("compressed frame header is truncated or has trailing bytes")
    return out


def _decode_header(data: memoryview | bytes, flags: int = 0) -> Any:
    if flags & FLAG_ZLIB:
        data = _inflate(data)
    try:
        header = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_no_ext,
            timestamp=0,
            object_pairs_hook=_str_keys,
            list_hook=_no_timestamps,
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several types on malformed input
        raise ProtocolError(f"malformed frame header: {exc}") from exc
    if type(header) is msgpack.Timestamp:
        raise ProtocolError("msgpack timestamps are not allowed")
    return header


def unpack(data: Buffer, *, max_size: int | None = None) -> tuple[Any, list[memoryview]]:
    """Decode a frame into (header, buffers). Buffers are zero-copy views into ``data``."""
    view = memoryview(data).cast("B")
    if max_size is not None and len(view) > max_size:
        raise ProtocolError(f"frame of {len(view)} bytes exceeds the limit of {max_size}")
    if len(view) < _FIXED.size:
        raise ProtocolError("frame too short")
    magic, version, flags, head_len, n_buf = _FIXED.unpack_from(view, 0)
    if magic != MAGIC:
        raise ProtocolError("not a duet frame (bad magic)")
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (this side speaks {VERSION})")
    if flags & ~FLAG_ZLIB:
        raise ProtocolError(f"unknown frame flags {flags:#04x}")
    if head_len > MAX_HEADER:
        raise ProtocolError(f"header length {head_len} exceeds {MAX_HEADER}")
    if n_buf > MAX_BUFFERS:
        raise ProtocolError(f"buffer count {n_buf} exceeds {MAX_BUFFERS}")
    pos = _FIXED.size
    if len(view) < pos + 8 * n_buf:
        raise ProtocolError("frame truncated in the buffer table")
    lengths = struct.unpack_from(f">{n_buf}Q", view, pos)
    pos += 8 * n_buf
    if pos + head_len + sum(lengths) != len(view):
        raise ProtocolError("frame lengths do not match its size")
    header = _decode_header(view[pos : pos + head_len], flags)
    pos += head_len
    buffers = []
    for n in lengths:
        buffers.append(view[pos : pos + n])
        pos += n
    return header, buffers
