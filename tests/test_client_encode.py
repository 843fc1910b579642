"""The client builds the argument tree of a typical call (pointers and plain scalars) without the codec's
walk; the tree must be exactly what the codec makes, and anything else must go through the codec."""

from __future__ import annotations

import enum
import math
from typing import Any

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from duet import codec
from duet.remote.client import Remote, _flat_tree
from duet.remote.pointer import Pointer

_REMOTE = Remote(lambda: None, lambda: "owner")  # type: ignore[arg-type,return-value]


class Level(enum.IntEnum):
    LOW = 1


def _pointer(n: int) -> Pointer:
    return Pointer(_REMOTE, f"s{n}", owned=False)


_items = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=4),
    st.integers(min_value=1, max_value=50).map(_pointer),
    st.just(Level.LOW),
    st.just(slice(1, 4)),
    st.builds(
        slice,
        st.one_of(st.none(), st.integers(-(2**70), 2**70), st.booleans()),
        st.one_of(st.none(), st.integers(-(2**70), 2**70), st.just(Level.LOW)),
        st.one_of(st.none(), st.integers(-3, 3), st.floats(0, 1)),
    ),
    st.lists(st.integers(), max_size=2),
    st.just(torch.zeros(2)),
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return type(a) is type(b) and (a == b or (math.isnan(a) and math.isnan(b)))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _codec(value: Any) -> Any:
    return codec.encode(value, [], pointer_id=Remote._pointer_id)


@settings(max_examples=400, deadline=None)
@given(st.lists(_items, max_size=40))
def test_a_flat_list_is_what_the_codec_makes(value: list[Any]) -> None:
    flat = _flat_tree(value)
    if flat is not None:
        assert _same(flat, _codec(value))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.one_of(st.text(max_size=6), st.integers(0, 3)), _items, max_size=20))
def test_a_flat_dict_is_what_the_codec_makes(value: dict[Any, Any]) -> None:
    flat = _flat_tree(value)
    if flat is not None:
        assert _same(flat, _codec(value))


def test_a_typical_calls_arguments_take_the_short_way() -> None:
    x = _pointer(7)
    for value in (
        [x, 2],
        [x, 1.5, None, "mean", True],
        {"dim": 1, "keepdim": True},
        {},
        [],
        [slice(1)],
        [slice(0, 32)],
        [slice(-(2**63), 2**63 - 1, -1)],
    ):
        flat = _flat_tree(value)
        assert flat is not None and _same(flat, _codec(value))
    for value in ([x, [1, 2]], [torch.zeros(1)], [Level.LOW], [2**64 - 1], {1: x}, [b"b"], [slice(True)]):
        assert _flat_tree(value) is None  # the codec's own way (and its checks and errors)
    for value in ([slice(2**63)], [slice(0, Level.LOW)], [slice(0, 1, 0.5)]):
        assert _flat_tree(value) is None


def test_a_calls_arguments_encode_as_the_list_of_them() -> None:
    """``call``/``method`` encode their argument tuple as ``_encode(list(args))`` did, slices included."""
    x = _pointer(7)
    for args in ((x, slice(0, 32)), (x, 2, None), (), (x, [1, 2]), (slice(None, Level.LOW),)):
        assert _same(_REMOTE._encode_args(args, []), _REMOTE._encode(list(args), []))


def test_namespace_names_are_checked_once_per_tables() -> None:
    """``d.torch.nn.functional.relu`` in a loop is looked up once; a new welcome's tables are applied anew."""
    import pytest

    from duet.errors import PermissionDenied
    from duet.remote.pointer import RemoteNamespace
    from duet.remote.tables import Tables

    remote = Remote(lambda: None, lambda: "owner")  # type: ignore[arg-type,return-value]
    th = RemoteNamespace(remote, "torch")
    relu = th.nn.functional.relu
    assert th.nn.functional.relu is relu and repr(relu) == "<remote torch.nn.functional.relu>"
    assert th.float32 is torch.float32  # a dtype is a local constant, remembered as such
    for _ in range(2):  # a refused name is not remembered: it is refused every time
        with pytest.raises(PermissionDenied):
            _ = th.os

    data = remote.tables.export()
    data["functions"] = [p for p in data["functions"] if p != "torch.nn.functional.relu"]
    remote.tables = Tables.parse(data)  # an owner whose welcome leaves relu out
    with pytest.raises(PermissionDenied, match="torch.nn.functional.relu"):
        _ = th.nn.functional.relu
    assert repr(th.nn.functional.max_pool2d) == "<remote torch.nn.functional.max_pool2d>"
    assert th.nn.functional is not None and th.nn.functional.max_pool2d is th.nn.functional.max_pool2d
