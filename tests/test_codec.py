"""The safe codec: round trips of every supported kind, and hostile trees that must fail cleanly."""

from __future__ import annotations

import math
import struct
import types
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from duet import codec, wire
from duet.codec import DTYPES, RAW_DTYPES, WIRE_DTYPES, PointerRef, decode, describe, encode, encode_value
from duet.errors import ProtocolError, QuotaExceeded
from duet.remote.store import Store

FAST = settings(max_examples=200, deadline=None)


# ------------------------------------------------------------------------------------------- helpers


def over_the_wire(value: Any, **kw: Any) -> Any:
    """encode -> wire.pack -> wire.unpack -> decode."""
    pointer_id = kw.pop("pointer_id", None)
    tree, buffers = encode_value(value, pointer_id=pointer_id)
    header, views = wire.unpack(wire.pack({"v": tree}, buffers))
    return decode(header["v"], views, **kw)


def tensor_bytes(t: torch.Tensor) -> bytes:
    return bytes(t.detach().resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8).numpy())


def same(a: Any, b: Any) -> bool:
    """Deep equality that also holds for nan (bitwise floats) and tensors, and checks exact types."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return (a.dtype, a.shape, a.requires_grad) == (b.dtype, b.shape, b.requires_grad) and tensor_bytes(
            a
        ) == tensor_bytes(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a.items(), b.items()))
    return bool(a == b)


def sample(dtype: torch.dtype, shape: tuple[int, ...] = (2, 3)) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.arange(math.prod(shape)).reshape(shape) % 3 == 0
    if dtype.is_complex:
        real = torch.randn(shape, dtype=torch.float64)
        return torch.complex(real, -real).to(dtype)
    if dtype.is_floating_point:
        t = torch.randn(shape, dtype=torch.float32).to(dtype)
        if t.numel() >= 3:
            t.view(-1)[:3] = torch.tensor([math.nan, math.inf, -0.0])
        return t
    return torch.arange(math.prod(shape), dtype=torch.int64).reshape(shape).to(dtype)


def storage_range(t: torch.Tensor) -> tuple[int, int]:
    start = t.untyped_storage().data_ptr()
    return start, start + t.untyped_storage().nbytes()


# -------------------------------------------------------------------------------------- tensors: each dtype


def test_dtype_table_covers_the_brief() -> None:
    for (
        name
    ) in "bool uint8 int8 int16 int32 int64 float16 bfloat16 float32 float64 complex64 complex128".split():
        assert DTYPES[name] == getattr(torch, name)


@pytest.mark.parametrize("name", sorted(DTYPES))
@pytest.mark.parametrize("shape", [(2, 3), (), (0,), (0, 4), (1, 1, 5)], ids=repr)
def test_every_dtype_round_trips(name: str, shape: tuple[int, ...]) -> None:
    t = sample(DTYPES[name], shape)
    out = over_the_wire(t)
    assert same(out, t)
    if not (t.dtype.is_floating_point or t.dtype.is_complex):
        assert torch.equal(out, t)


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_non_contiguous_tensors(name: str) -> None:
    base = sample(DTYPES[name], (4, 6))
    for view in (base.t(), base[::2, 1::3], base[:, 2], base[1:], base.expand(2, 4, 6)):
        assert not view.is_contiguous() or view.storage_offset() > 0
        assert same(over_the_wire(view), view.contiguous())


def test_raw_dtype_table() -> None:
    for name in "float8_e4m3fn float8_e4m3fnuz float8_e5m2 float8_e5m2fnuz complex32".split():
        assert RAW_DTYPES[name] == getattr(torch, name)
    assert torch.chalf in WIRE_DTYPES.values()
    assert not set(DTYPES) & set(RAW_DTYPES)


@pytest.mark.parametrize("name", sorted(RAW_DTYPES))
@pytest.mark.parametrize("shape", [(2, 3), (), (0,), (0, 4), (1, 1, 5)], ids=repr)
def test_raw_dtypes_round_trip_bit_exact(name: str, shape: tuple[int, ...]) -> None:
    dtype = RAW_DTYPES[name]
    nbytes = math.prod(shape) * dtype.itemsize
    raw = torch.arange(nbytes, dtype=torch.int64).mul(37).remainder(256).to(torch.uint8)
    t = raw.view(dtype).reshape(shape)
    for value in (t, t.transpose(0, 1) if len(shape) >= 2 else t, [t, {"d": dtype}]):
        out = over_the_wire(value)
        assert same(out, value)
    out = over_the_wire(t)
    assert out.dtype == dtype and out.shape == t.shape
    assert torch.equal(out.reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8))
    assert over_the_wire(dtype) is dtype


def test_float8_requires_grad_travels() -> None:
    t = torch.tensor([0.5, -2.0]).to(torch.float8_e4m3fn).requires_grad_()
    out = over_the_wire(t)
    assert out.requires_grad and out.dtype == torch.float8_e4m3fn
    assert torch.equal(out.detach().view(torch.uint8), t.detach().view(torch.uint8))


UNSENDABLE = [
    torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8),
    torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.quint8),
    *(torch.zeros(4, dtype=getattr(torch, n)) for n in ("uint4", "int3") if hasattr(torch, n)),
]


@pytest.mark.parametrize("t", UNSENDABLE, ids=lambda t: str(t.dtype))
def test_publish_refuses_what_cannot_travel(t: torch.Tensor) -> None:
    store = Store()
    with pytest.raises(TypeError):
        encode_value(t)
    for obj in (t, [1, t], {"x": (t,)}, t.dtype):
        with pytest.raises(TypeError, match=str(t.dtype)):
            store.publish(obj, name="bad")
    module = torch.nn.Linear(2, 2)
    module.register_buffer("q", t)
    with pytest.raises(TypeError, match=str(t.dtype)):
        store.publish(module)
    assert len(store.published()) == 0


def test_publish_takes_every_wire_dtype() -> None:
    store = Store()
    for name, dtype in WIRE_DTYPES.items():
        entry = store.publish(torch.zeros(3, dtype=dtype), name=name)
        assert entry.meta["dtype"] == name and entry.meta["size_bytes"] == 3 * dtype.itemsize
        tree, buffers = encode_value(entry.obj)
        assert decode(tree, buffers).dtype == dtype


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex128]
)
def test_requires_grad_is_carried(dtype: torch.dtype) -> None:
    t = sample(dtype).requires_grad_()
    out = over_the_wire(t)
    assert out.requires_grad and out.is_leaf and same(out, t)
    assert not over_the_wire(t.detach()).requires_grad


def test_parameter_travels_as_a_tensor_with_requires_grad() -> None:
    p = torch.nn.Parameter(torch.randn(3, 2))
    out = over_the_wire(p)
    assert type(out) is torch.Tensor and out.requires_grad and torch.equal(out, p.detach())
    assert not over_the_wire(torch.nn.Parameter(torch.ones(2), requires_grad=False)).requires_grad


def test_conjugate_and_negative_views_travel_resolved() -> None:
    c = torch.tensor([1 + 2j, 3 - 4j])
    assert torch.equal(over_the_wire(c.conj()), torch.tensor([1 - 2j, 3 + 4j]))
    assert torch.equal(over_the_wire(torch._neg_view(c)), -c)


def test_nan_and_signed_zero_bits_survive() -> None:
    t = torch.tensor([math.nan, -math.nan, -0.0, math.inf, -math.inf], dtype=torch.float64)
    assert tensor_bytes(over_the_wire(t)) == tensor_bytes(t)


def test_encoding_is_zero_copy_for_contiguous_cpu_tensors() -> None:
    t = torch.arange(10, dtype=torch.float32)
    tree, (buf,) = encode_value(t)
    assert tree == ["tensor", "float32", [10], 0, False]
    address = np.frombuffer(buf, dtype=np.uint8).ctypes.data
    assert address == t.data_ptr()


def test_decoded_tensors_own_their_memory() -> None:
    t = torch.arange(12, dtype=torch.int32).reshape(3, 4)
    tree, buffers = encode_value(t)
    incoming = bytearray(bytes(buffers[0]))
    out = decode(tree, [memoryview(incoming)])
    lo, hi = storage_range(out)
    address = np.frombuffer(incoming, dtype=np.uint8).ctypes.data
    assert hi <= address or lo >= address + len(incoming)
    incoming[:] = bytes(len(incoming))  # the network buffer is reused ...
    assert torch.equal(out, t)  # ... and the tensor does not change
    out += 1  # and the tensor is writable
    frame = wire.pack(tree, buffers)
    header, views = wire.unpack(frame)
    from_frame = decode(header, views)
    lo, hi = storage_range(from_frame)
    frame_at = np.frombuffer(frame, dtype=np.uint8).ctypes.data
    assert hi <= frame_at or lo >= frame_at + len(frame)


# ------------------------------------------------------------------------------------ other kinds


def test_scalars_and_containers_round_trip_exactly() -> None:
    value: dict[Any, Any] = {
        "none": None,
        "flags": [True, False],
        "ints": (0, -1, 2**63 - 1, -(2**63), 2**64 - 1),
        "floats": [1.5, -0.0, math.inf, -math.inf],
        "complex": [1 + 2j, complex(math.inf, -0.0)],
        "text": ["", "héllo ✓"],
        "bytes": b"\x00\xff",
        1: "int key",
        2.5: "float key",
        None: "None key",
        False: "bool key",
        (1, ("a", None), b"k"): "tuple key",
        "nested": [[[]], (), {}, ((),)],
    }
    out = over_the_wire(value)
    assert same(out, value)
    assert list(out) == list(value)  # order kept
    assert math.isnan(over_the_wire(math.nan))


def test_torch_and_python_helpers_round_trip() -> None:
    value = [
        slice(None),
        slice(1, -1, 2),
        slice(None, 5),
        ...,
        torch.Size([2, 0, 3]),
        torch.Size([]),
        *DTYPES.values(),
        torch.device("cpu"),
        torch.device("cuda", 1),
        torch.device("mps"),
    ]
    assert same(over_the_wire(value), value)


def test_tree_shape_is_tagged_and_unambiguous() -> None:
    tree, buffers = encode_value([["list", 1], {"tensor": ("ptr", "x")}])
    assert tree == ["list", ["list", "list", 1], ["dict", "tensor", ["tuple", "ptr", "x"]]]
    assert buffers == []
    assert over_the_wire(["ptr", "x"]) == ["ptr", "x"]


def test_subclasses_and_numpy_scalars_travel_as_builtins() -> None:
    import enum

    class Color(enum.IntEnum):
        RED = 1

    class Name(str):
        pass

    out = over_the_wire(
        [Color.RED, Name("a"), np.float32(1.5), np.int64(-3), np.bool_(True), np.complex64(1j)]
    )
    assert same(out, [1, "a", 1.5, -3, True, 1j])


def test_buffers_of_several_values_share_one_frame() -> None:
    buffers: list[Any] = []
    trees = [encode(torch.ones(2), buffers), encode([torch.zeros(3), torch.ones(1)], buffers)]
    assert [t[3] for t in (trees[0], *trees[1][1:])] == [0, 1, 2]
    header, views = wire.unpack(wire.pack(trees, buffers))
    used: set[int] = set()
    first, second = (decode(t, views, used=used) for t in header)
    assert torch.equal(first, torch.ones(2)) and torch.equal(second[0], torch.zeros(3))
    assert used == {0, 1, 2}
    with pytest.raises(ProtocolError, match="used twice"):
        decode(header[0], views, used=used)


# ----------------------------------------------------------------------------------------- pointers


class Remote:
    def __init__(self, ref: str) -> None:
        self.ref = ref


def test_pointers_round_trip_through_the_hooks() -> None:
    a, b = Remote("id-a"), Remote("id-b")
    value = {"x": a, "pair": (b, 3), "ref": PointerRef("id-c")}
    tree, _ = encode_value(value, pointer_id=lambda o: o.ref if isinstance(o, Remote) else None)
    assert tree == [
        "dict",
        "x",
        ["ptr", "id-a"],
        "pair",
        ["tuple", ["ptr", "id-b"], 3],
        "ref",
        ["ptr", "id-c"],
    ]
    store = {"id-a": "A", "id-b": "B", "id-c": "C"}
    assert decode(tree, [], make_pointer=store.__getitem__) == {"x": "A", "pair": ("B", 3), "ref": "C"}
    assert decode(tree, [])["x"] == PointerRef("id-a")


def test_pointer_id_can_claim_tensors_and_containers() -> None:
    t, lst = torch.ones(2), [1, 2]
    ids = {id(t): "t", id(lst): "l"}
    tree, buffers = encode_value([t, lst, [3]], pointer_id=lambda o: ids.get(id(o)))
    assert tree == ["list", ["ptr", "t"], ["ptr", "l"], ["list", 3]] and buffers == []


# -------------------------------------------------------------------------------------- encode refuses


@pytest.mark.parametrize(
    "obj",
    [
        lambda: 1,
        len,
        type,
        Remote,
        object(),
        types,
        np.zeros(3),
        {1, 2},
        frozenset(),
        range(3),
        bytearray(b"x"),
    ],
    ids=[
        "lambda",
        "builtin",
        "type",
        "class",
        "object",
        "module",
        "ndarray",
        "set",
        "frozenset",
        "range",
        "bytearray",
    ],
)
def test_unsupported_objects_do_not_encode(obj: Any) -> None:
    with pytest.raises(TypeError, match="cannot be sent|not sent implicitly"):
        encode_value(obj)
    with pytest.raises(TypeError):
        encode_value({"deep": [1, (obj,)]})


def test_numpy_array_error_says_what_to_do() -> None:
    with pytest.raises(TypeError, match="torch.from_numpy"):
        encode_value(np.arange(3))


@pytest.mark.parametrize(
    "obj, error",
    [
        (2**64, ValueError),
        (-(2**63) - 1, ValueError),
        ({(1, (2, None)): 3}, None),
        (slice(1.5), TypeError),
        (slice(True), TypeError),
        (slice("a", "b"), TypeError),
        (torch.qint8, TypeError),
        (torch.float8_e4m3fn, None),
        (torch.zeros(2, dtype=torch.float8_e4m3fn), None),
        (torch.zeros(2).to_sparse(), ValueError),
        (torch.zeros(2, device="meta"), ValueError),
        (torch.device("meta"), ValueError),
    ],
    ids=repr,
)
def test_unrepresentable_values(obj: Any, error: type[Exception] | None) -> None:
    if error is None:
        encode_value(obj)
        return
    with pytest.raises(error):
        encode_value(obj)


def test_unhashable_or_foreign_dict_keys_do_not_encode() -> None:
    for key in (torch.ones(1), PointerRef("x"), torch.float32, (1, torch.ones(1)), Remote("a")):
        with pytest.raises(TypeError, match="dict key"):
            encode_value({key: 1})


def test_depth_and_cycles_on_encode() -> None:
    nested: Any = 1
    for _ in range(codec.ENCODE_MAX_DEPTH):
        nested = [nested]
    assert over_the_wire(nested) == nested
    with pytest.raises(ValueError, match="nested"):
        encode_value([nested])
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="nested"):
        encode_value(cycle)


# -------------------------------------------------------------------------------------- decode refuses

T = ["tensor", "float32", [2], 0, False]
EIGHT = [bytes(8)]


@pytest.mark.parametrize(
    "tree, buffers",
    [
        ({"a": 1}, []),  # a bare map is never a value
        ([], []),
        ([1, 2], []),
        (["nope"], []),
        (["List", 1], []),
        ([b"list", 1], []),
        (["dict", "a"], []),
        (["dict", ["list"], 1], []),  # unhashable key
        (["dict", ["tensor", "float32", [2], 0, False], 1], EIGHT),  # tensor key
        (["dict", ["ptr", "x"], 1], []),
        (["dict", ["tuple", ["list"]], 1], []),
        (["complex", 1, 2], []),
        (["complex", 1.0], []),
        (["slice", 1.5, None, None], []),
        (["slice", 1, 2], []),
        (["slice", True, None, None], []),
        (["ellipsis", 1], []),
        (["dtype", "float"], []),
        (["dtype", "__class__"], []),
        (["dtype", "qint8"], []),
        (["dtype", "uint4"], []),
        (["dtype", "torch.float8_e4m3fn"], []),
        (["dtype", 5], []),
        (["size", -1], []),
        (["size", 1.0], []),
        (["size", *([1] * 65)], []),
        (["device", "meta", None], []),
        (["device", "cuda", -1], []),
        (["device", "cuda", True], []),
        (["device", "cpu"], []),
        (["ptr", ""], []),
        (["ptr", 5], []),
        (["ptr", "x" * 300], []),
        (["ptr"], []),
        (["tensor", "float32", [2], 0], EIGHT),
        (["tensor", "float33", [2], 0, False], EIGHT),
        (["tensor", "float32", [-2], 0, False], EIGHT),
        (["tensor", "float32", [2.0], 0, False], EIGHT),
        (["tensor", "float32", [True, 2], 0, False], EIGHT),
        (["tensor", "float32", 2, 0, False], EIGHT),
        (["tensor", "float32", ["list", 2], 0, False], EIGHT),
        (["tensor", "float32", [1] * 65, 0, False], EIGHT),
        (["tensor", "float32", [2], 1, False], EIGHT),
        (["tensor", "float32", [2], -1, False], EIGHT),
        (["tensor", "float32", [2], True, False], EIGHT),
        (["tensor", "float32", [2], None, False], EIGHT),
        (["tensor", "float32", [2], 0, 1], EIGHT),
        (["tensor", "int64", [1], 0, True], EIGHT),
        (["tensor", "float32", [3], 0, False], EIGHT),
        (["tensor", "float32", [1], 0, False], EIGHT),
        (["tensor", "float64", [], 0, False], [bytes(7)]),
        (["tensor", "bool", [2], 0, False], [b"\x01\x02"]),
        (["tensor", "float32", [0, 2**62, 4], 0, False], [b""]),
        (["list", T, T], EIGHT),  # one buffer, two tensors
        (["list", 1, ["list", ["oops"]]], []),
    ],
    ids=repr,
)
def test_malformed_trees_raise_protocol_error(tree: Any, buffers: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        decode(tree, buffers)


def test_depth_limit_on_decode() -> None:
    tree: Any = 1
    for _ in range(10):
        tree = ["tuple", tree]
    assert decode(tree, [], max_depth=10) is not None
    with pytest.raises(ProtocolError, match="nested"):
        decode(["list", tree], [], max_depth=10)
    with pytest.raises(ProtocolError, match="nested"):
        decode(["dict", "k", tree], [], max_depth=10)


def test_item_limit_on_decode() -> None:
    assert decode(["list", *range(9)], [], max_items=10) == list(range(9))
    with pytest.raises(ProtocolError, match="too many items"):
        decode(["list", *range(10)], [], max_items=10)


def test_colliding_dict_keys_are_refused() -> None:
    keys = [2.0 ** (61 * k) for k in range(-8, 12)]  # all hash to 1
    assert len({hash(k) for k in keys}) == 1
    with pytest.raises(ProtocolError, match="same hash"):
        decode(["dict", *(x for k in keys for x in (k, None))], [])
    assert decode(["dict", -1, "a", -2, "b"], []) == {-1: "a", -2: "b"}  # a few collisions are fine


def test_max_tensor_bytes_is_enforced() -> None:
    t = torch.zeros(4, 4, dtype=torch.float64)  # 128 bytes
    assert torch.equal(over_the_wire(t, max_tensor_bytes=128), t)
    with pytest.raises(QuotaExceeded, match="128 bytes"):
        over_the_wire({"w": [t]}, max_tensor_bytes=127)
    assert over_the_wire(torch.zeros(0, 5), max_tensor_bytes=0).shape == (0, 5)


def test_make_pointer_errors_propagate_unchanged() -> None:
    with pytest.raises(KeyError):
        store: dict[str, Any] = {}
        decode(["ptr", "missing"], [], make_pointer=store.__getitem__)


# ------------------------------------------------------------------------------------ property-based

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
)
KEYS = st.recursive(SCALARS, lambda inner: st.tuples(inner, inner) | st.tuples(inner), max_leaves=4)


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = WIRE_DTYPES[draw(st.sampled_from(sorted(WIRE_DTYPES)))]
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    nbytes = math.prod(shape) * dtype.itemsize
    data = draw(st.binary(min_size=nbytes, max_size=nbytes))
    if dtype == torch.bool:
        data = bytes(b & 1 for b in data)
    t = torch.frombuffer(bytearray(data), dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)
    t = t.view(dtype).reshape(shape)
    if len(shape) >= 2 and draw(st.booleans()):
        t = t.transpose(0, 1)
    if (dtype.is_floating_point or dtype.is_complex) and draw(st.booleans()):
        t.requires_grad_()
    return t


OTHERS = st.one_of(
    st.complex_numbers(allow_nan=True),
    st.builds(
        slice,
        st.none() | st.integers(-5, 5),
        st.none() | st.integers(-(2**63), 2**63),
        st.none() | st.integers(1, 3),
    ),
    st.just(Ellipsis),
    st.sampled_from(list(WIRE_DTYPES.values())),
    st.builds(torch.Size, st.lists(st.integers(0, 2**40), max_size=4)),
    st.sampled_from(
        [torch.device("cpu"), torch.device("cuda", 0), torch.device("cuda"), torch.device("mps")]
    ),
    st.builds(PointerRef, st.text(min_size=1, max_size=10)),
    tensors(),
)
VALUES = st.recursive(
    SCALARS | OTHERS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(KEYS, inner, max_size=4)
    ),
    max_leaves=12,
)


@FAST
@given(VALUES)
def test_every_encodable_value_round_trips(value: Any) -> None:
    assert same(over_the_wire(value), value)


TAGS = ["list", "tuple", "dict", "complex", "slice", "ellipsis", "tensor", "dtype", "size", "device", "ptr"]
PRIMITIVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.integers(-3, 5),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(TAGS + list(WIRE_DTYPES) + ["qint8", "uint4", "cpu", "cuda"]),
    st.binary(max_size=8),
)
TREES = st.recursive(
    PRIMITIVES,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.tuples(st.sampled_from(TAGS), st.lists(inner, max_size=5)).map(lambda p: [p[0], *p[1]])
        | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=20,
)
BUFFERS = st.lists(st.binary(max_size=24), max_size=3)


def check_decode(tree: Any, buffers: list[Any]) -> None:
    try:
        decode(tree, buffers, max_tensor_bytes=16, make_pointer=lambda ref: ref)
    except (ProtocolError, QuotaExceeded):
        pass
    try:  # with no tensor limit, a malformed tree is a ProtocolError and nothing else
        decode(tree, buffers, max_tensor_bytes=None, make_pointer=lambda ref: ref)
    except ProtocolError:
        pass


@FAST
@given(TREES, BUFFERS)
def test_arbitrary_trees_fail_only_cleanly(tree: Any, buffers: list[bytes]) -> None:
    check_decode(tree, buffers)
    header, views = wire.unpack(wire.pack({"v": tree}, buffers))
    check_decode(header["v"], views)


@FAST
@given(st.binary(max_size=200), BUFFERS)
def test_arbitrary_bytes_fail_only_cleanly(data: bytes, buffers: list[bytes]) -> None:
    for frame in (data, raw_frame(data, buffers)):  # as a whole frame, and as a header with real buffers
        try:
            header, views = wire.unpack(frame)
        except ProtocolError:
            continue
        check_decode(header, views)


def raw_frame(head: bytes, buffers: list[bytes]) -> bytes:
    lengths = struct.pack(f">{len(buffers)}Q", *map(len, buffers))
    return (
        struct.pack(">2sBBII", wire.MAGIC, wire.VERSION, 0, len(head), len(buffers))
        + lengths
        + head
        + b"".join(buffers)
    )


def subtree_paths(node: Any, path: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    paths = [path]
    if isinstance(node, list):
        for i, child in enumerate(node):
            paths += subtree_paths(child, (*path, i))
    return paths


def replaced(node: Any, path: tuple[int, ...], new: Any) -> Any:
    if not path:
        return new
    copy = list(node)
    copy[path[0]] = replaced(node[path[0]], path[1:], new)
    return copy


@FAST
@given(VALUES, st.data())
def test_mutated_valid_trees_fail_only_cleanly(value: Any, data: st.DataObject) -> None:
    tree, buffers = encode_value(value)
    path = data.draw(st.sampled_from(subtree_paths(tree)))
    check_decode(replaced(tree, path, data.draw(TREES)), [bytes(b) for b in buffers])


def test_huge_max_depth_still_fails_cleanly() -> None:
    tree: Any = None
    for _ in range(5000):
        tree = ["list", tree]
    with pytest.raises(ProtocolError):
        decode(tree, [], max_depth=10**6)


# ------------------------------------------------------------------------------------------- describe


def test_describe() -> None:
    t = torch.zeros(3, 4, dtype=torch.bfloat16)
    assert describe(t) == {
        "type": "Tensor",
        "shape": [3, 4],
        "dtype": "bfloat16",
        "size_bytes": 24,
        "numel": 12,
    }
    assert describe(2.5) == {"type": "float", "shape": None, "dtype": None, "size_bytes": 8, "numel": 1}
    assert describe("héllo")["size_bytes"] == 6
    nested = describe({"a": [torch.ones(5), 1], "b": (2.0,)})
    assert (nested["type"], nested["shape"], nested["numel"]) == ("dict", [2], 2 + 5 + 1 + 1)
    assert nested["size_bytes"] == 2 + 20 + 8 + 8
    linear = describe(torch.nn.Linear(3, 2))
    assert (linear["type"], linear["dtype"], linear["numel"], linear["size_bytes"]) == (
        "Linear",
        "float32",
        8,
        32,
    )
    assert describe(torch.Size([2, 3]))["numel"] == 2
    assert describe(torch.nn.Parameter(torch.ones(2)))["numel"] == 2
    cycle: list[Any] = []
    cycle.append(cycle)
    assert describe(cycle)["numel"] == 1


def _reassembled(header: dict, buffers: list) -> memoryview:
    """A frame sent in parts and put together by the receiver's Reassembly."""
    from duet import parts, wire

    data = wire.pack(header, buffers)
    r = parts.Reassembly()
    step = 256 * 1024
    frame = None
    for i in range(0, len(data), step):
        flags = (parts._FIRST if i == 0 else 0) | (parts._LAST if i + step >= len(data) else 0)
        _, frame = r.add(flags, 1, memoryview(data[i : i + step]))
    assert frame is not None
    return frame


def test_a_large_tensor_of_a_reassembled_frame_is_decoded_in_place_once() -> None:
    from duet import wire

    big = torch.arange(600_000, dtype=torch.float32)  # 2.4 MB: nearly all of its frame
    small = torch.ones(3)
    tree = codec.encode([big, small], bufs := [])
    header, buffers = wire.unpack(_reassembled({"v": tree}, bufs))
    frame = buffers[0].obj
    first = codec.decode(tree, buffers)
    assert torch.equal(first[0], big) and torch.equal(first[1], small)
    address = first[0].data_ptr()
    assert address == np.frombuffer(buffers[0], np.uint8).ctypes.data  # the frame's own memory
    assert address % 64 == 0
    assert first[1].data_ptr() != np.frombuffer(buffers[1], np.uint8).ctypes.data  # small: a copy
    again = codec.decode(tree, buffers)  # the same buffer again: a copy, never a second alias
    assert torch.equal(again[0], big) and again[0].data_ptr() != address
    first[0].add_(1)
    assert torch.equal(again[0], big)
    del header, buffers
    assert torch.equal(first[0], big + 1)  # the tensor keeps its memory alive
    assert frame.nbytes < first[0].numel() * 4 * 8 / 7


def test_tensors_are_copied_from_frames_that_are_not_mostly_theirs_or_not_reassembled() -> None:
    from duet import wire

    a, b = torch.rand(300_000), torch.rand(300_000)  # 1.2 MB each: half of the frame each
    tree = codec.encode([a, b], bufs := [])
    _, buffers = wire.unpack(_reassembled({"v": tree}, bufs))
    out = codec.decode(tree, buffers)
    assert torch.equal(out[0], a) and torch.equal(out[1], b)
    assert out[0].data_ptr() != np.frombuffer(buffers[0], np.uint8).ctypes.data
    tree = codec.encode(a, bufs := [])
    _, buffers = wire.unpack(wire.pack({"v": tree}, bufs))  # one bytes object, as a single message
    out = codec.decode(tree, buffers)
    assert torch.equal(out, a) and out.data_ptr() != np.frombuffer(buffers[0], np.uint8).ctypes.data
