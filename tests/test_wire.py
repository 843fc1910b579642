"""Frames: round trips, and every kind of malformed frame raises ProtocolError only."""

from __future__ import annotations

import struct
import zlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duet import wire
from duet.errors import ProtocolError

FAST = settings(max_examples=200, deadline=None)
FIXED = struct.Struct(">2sBBII")


def raw_frame(head: bytes, lengths: tuple[int, ...] = (), body: bytes = b"", magic: bytes = b"DU") -> bytes:
    """A frame assembled by hand, so that tests can lie in any field."""
    table = struct.pack(f">{len(lengths)}Q", *lengths)
    return FIXED.pack(magic, wire.VERSION, 0, len(head), len(lengths)) + table + head + body


# ------------------------------------------------------------------------------------------ round trips


def test_round_trip_without_buffers() -> None:
    header = {"type": "call", "id": 7, "path": "torch.add", "args": [1, 2.5, None, True, b"\x00"]}
    assert wire.unpack(wire.pack(header)) == (header, [])


def test_round_trip_with_several_and_empty_buffers() -> None:
    buffers: list[wire.Buffer] = [b"abc", b"", bytearray(b"\x00\xff" * 10), memoryview(b"xyz"), b""]
    header, views = wire.unpack(wire.pack({"n": 5}, buffers))
    assert header == {"n": 5}
    assert [bytes(v) for v in views] == [bytes(b) for b in buffers]


def test_large_buffer_is_a_zero_copy_view() -> None:
    big = bytes(range(256)) * (40 * 1024 + 1)  # ~10 MB, above the header limit
    data = wire.pack({"big": True}, [big])
    _, (view,) = wire.unpack(data)
    assert view.nbytes == len(big) and view == big
    assert view.obj is data  # a view into the frame, not a copy


def test_pack_segments_matches_pack_and_references_buffers() -> None:
    buf = bytearray(b"payload")
    segments = wire.pack_segments({"k": "v"}, [buf, b"second"])
    assert b"".join(segments) == wire.pack({"k": "v"}, [buf, b"second"])
    assert isinstance(segments[1], memoryview) and segments[1].obj is buf


def test_non_byte_memoryview_is_sent_by_its_bytes() -> None:
    ints = memoryview(struct.pack("<3i", 1, 2, 3)).cast("i")
    _, (view,) = wire.unpack(wire.pack({}, [ints]))
    assert view.nbytes == 12 and bytes(view) == struct.pack("<3i", 1, 2, 3)


def test_unpack_accepts_bytearray_and_memoryview() -> None:
    data = wire.pack([1, "two"], [b"3"])
    for form in (bytearray(data), memoryview(data)):
        header, (view,) = wire.unpack(form)
        assert header == [1, "two"] and view == b"3"


# ---------------------------------------------------------------------------------------- pack refuses


def test_pack_refuses_too_many_buffers() -> None:
    with pytest.raises(ProtocolError, match="too many buffers"):
        wire.pack({}, [b""] * (wire.MAX_BUFFERS + 1))


def test_pack_refuses_unencodable_header() -> None:
    with pytest.raises(ProtocolError, match="cannot be encoded"):
        wire.pack({"x": object()})


# ------------------------------------------------------------------------------------- malformed frames


def test_bad_magic() -> None:
    with pytest.raises(ProtocolError, match="magic"):
        wire.unpack(raw_frame(msgpack.packb(1), magic=b"XX"))


@pytest.mark.parametrize("version", [0, 1, 3, 255])
def test_unknown_version(version: int) -> None:
    data = bytearray(wire.pack({"a": 1}))
    data[2] = version
    with pytest.raises(ProtocolError, match="version"):
        wire.unpack(bytes(data))


def test_every_truncation_is_refused() -> None:
    data = wire.pack({"a": [1, 2, 3]}, [b"abcdef", b"gh"])
    for end in range(len(data)):
        with pytest.raises(ProtocolError):
            wire.unpack(data[:end])


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(ProtocolError, match="lengths"):
        wire.unpack(wire.pack({"a": 1}, [b"x"]) + b"\x00")


def test_buffer_length_mismatch() -> None:
    head = msgpack.packb({"a": 1})
    with pytest.raises(ProtocolError):
        wire.unpack(raw_frame(head, (4,), b"abc"))
    with pytest.raises(ProtocolError):
        wire.unpack(raw_frame(head, (2,), b"abc"))


@pytest.mark.parametrize(
    "head",
    [b"\xc1", b"\x81", msgpack.packb(1) + b"\x01", b"\xd9\x05ab", b"\x91" * 5000 + b"\xc0", b""],
    ids=["reserved-byte", "truncated-map", "extra-data", "short-str", "too-deep", "empty"],
)
def test_header_garbage(head: bytes) -> None:
    with pytest.raises(ProtocolError):
        wire.unpack(raw_frame(head))


def test_invalid_utf8_in_header_string() -> None:
    with pytest.raises(ProtocolError):
        wire.unpack(raw_frame(b"\xa2\xff\xfe"))


def test_extension_types_are_refused() -> None:
    head = msgpack.packb({"x": msgpack.ExtType(5, b"payload")})
    with pytest.raises(ProtocolError, match="extension"):
        wire.unpack(raw_frame(head))


def test_timestamp_extension_is_refused() -> None:
    with pytest.raises(ProtocolError):
        wire.unpack(raw_frame(msgpack.packb(msgpack.Timestamp(1, 0))))


@pytest.mark.parametrize("key", [1, -3, 1.5, None, True], ids=repr)
def test_non_str_map_keys_are_refused(key: object) -> None:
    head = msgpack.packb({key: 1})
    with pytest.raises(ProtocolError):
        wire.unpack(raw_frame(head))


def test_bytes_map_keys_are_refused() -> None:
    with pytest.raises(ProtocolError):
        wire.unpack(raw_frame(msgpack.packb({b"k": 1})))


def test_huge_declared_lengths() -> None:
    head = msgpack.packb(1)
    with pytest.raises(ProtocolError):  # a u64 buffer length far beyond the data
        wire.unpack(raw_frame(head, (2**64 - 1,)))
    with pytest.raises(ProtocolError):  # lengths that would wrap around in 64-bit arithmetic
        wire.unpack(raw_frame(head, (2**64 - 1, 2)) + b"x")
    with pytest.raises(ProtocolError, match="header length"):
        wire.unpack(FIXED.pack(b"DU", wire.VERSION, 0, 2**32 - 1, 0) + head)
    with pytest.raises(ProtocolError, match="buffer count"):
        wire.unpack(FIXED.pack(b"DU", wire.VERSION, 0, len(head), 2**32 - 1) + head)
    with pytest.raises(ProtocolError, match="truncated"):
        wire.unpack(FIXED.pack(b"DU", wire.VERSION, 0, len(head), wire.MAX_BUFFERS) + head)


def test_max_size() -> None:
    data = wire.pack({}, [b"x" * 100])
    assert wire.unpack(data, max_size=len(data))[1][0] == b"x" * 100
    with pytest.raises(ProtocolError, match="exceeds"):
        wire.unpack(data, max_size=len(data) - 1)


# ------------------------------------------------------------------------------------------------ fuzz


def check_unpack(data: bytes) -> None:
    try:
        wire.unpack(data)
    except ProtocolError:
        pass


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    check_unpack(data)
    check_unpack(b"DU\x01" + data)  # past the magic and version checks


@FAST
@given(
    head=st.binary(max_size=200), lengths=st.lists(st.integers(0, 2**64 - 1), max_size=4), body=st.binary()
)
def test_arbitrary_header_bytes_raise_only_protocol_error(
    head: bytes, lengths: list[int], body: bytes
) -> None:
    check_unpack(raw_frame(head, tuple(lengths), body))
    check_unpack(raw_frame(head, tuple(n % 8 for n in lengths), body))


@FAST
@given(position=st.integers(0, 10_000), value=st.integers(0, 255))
def test_corrupted_valid_frames_raise_only_protocol_error(position: int, value: int) -> None:
    data = bytearray(wire.pack({"type": "call", "args": [1, "x", [2.0, None]], "n": -5}, [b"abc", b""]))
    data[position % len(data)] = value
    check_unpack(bytes(data))


# ---- compressed headers -------------------------------------------------------------------------------------


def test_large_headers_travel_compressed_and_small_ones_do_not() -> None:
    ops = [
        {"k": "call", "p": "torch.nn.functional.relu", "a": ["list", ["ptr", f"s{i}"]], "o": f"s{i + 1}"}
        for i in range(200)
    ]
    big = wire.pack({"t": "ops", "ops": ops}, [b"tensor bytes"])
    assert big[3] == wire.FLAG_ZLIB
    assert len(big) < len(msgpack.packb({"t": "ops", "ops": ops})) / 3
    header, buffers = wire.unpack(big)
    assert header == {"t": "ops", "ops": ops}
    assert [bytes(b) for b in buffers] == [b"tensor bytes"]
    assert wire.peek(big[:30]) is None  # the compressed header has not all arrived
    assert wire.peek(big) == (header, len(big))
    small = wire.pack({"t": "hb"})
    assert small[3] == 0
    assert wire.unpack(small)[0] == {"t": "hb"}


def _compressed_frame(head: bytes, flags: int = wire.FLAG_ZLIB) -> bytes:
    return FIXED.pack(b"DU", wire.VERSION, flags, len(head), 0) + head


def test_a_compressed_header_cannot_expand_past_the_limit() -> None:
    bomb = zlib.compress(b"\x00" * (wire.MAX_HEADER + 1), 9)  # ~8 KB that would inflate to 8 MiB + 1
    assert len(bomb) < 20_000
    with pytest.raises(ProtocolError, match="expands beyond"):
        wire.unpack(_compressed_frame(bomb))
    assert wire.peek(_compressed_frame(bomb)) is None


@pytest.mark.parametrize(
    "head",
    [
        b"not zlib at all",
        zlib.compress(msgpack.packb({"a": 1}))[:-3],  # truncated
        zlib.compress(msgpack.packb({"a": 1})) + b"trailing",
        zlib.compress(b"\xc1"),  # inflates to a byte msgpack never uses
        zlib.compress(msgpack.packb({1: 2})),  # inflates to a map with a non-string key
    ],
)
def test_bad_compressed_headers_are_protocol_errors(head: bytes) -> None:
    with pytest.raises(ProtocolError):
        wire.unpack(_compressed_frame(head))


@pytest.mark.parametrize("flags", [0x02, 0x80, 0xFF])
def test_unknown_flags_are_refused(flags: int) -> None:
    head = msgpack.packb({"a": 1})
    with pytest.raises(ProtocolError, match="flags"):
        wire.unpack(_compressed_frame(head, flags))
