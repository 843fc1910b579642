"""The executor's fast paths give what the general code gives: dry-run keys, metadata, log text, read-only
checks, the allowlist's memo, the autograd walk, decoding, and the meta-device warm-up."""

from __future__ import annotations

import enum
import gc
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch

from duet import codec
from duet.errors import ProtocolError, QuotaExceeded
from duet.remote import guards, readonly, store
from duet.remote.activity import ActivityLog, ArgKinds, kind
from duet.remote.allowlist import DEFAULT_ALLOWLIST as A


class _Int(enum.IntEnum):
    ONE = 1


class _List(list):  # type: ignore[type-arg]
    pass


_SIG_CASES = [
    1,
    True,
    1.0,
    "a",
    None,
    torch.float32,
    torch.device("cpu"),
    torch.zeros(2, 3),
    torch.nn.Parameter(torch.zeros(2)),
    slice(1, 2, None),
    [1, 2.0, None, slice(0, 3, 1)],
    (1, [2, (3,)]),
    {"a": 1, "b": [torch.zeros(1)]},
    {},
    _Int.ONE,
    _List([1]),
    torch.Size([2, 3]),
    ("x", torch.zeros(1), [slice(0, 3, None)], {"dim": 1}),
]


def _reference_sig(x: object, depth: int = 0) -> object:
    """The signature as first written: isinstance checks, one call per item."""
    if isinstance(x, torch.Tensor):
        return ("T", tuple(x.shape), x.dtype)
    if x is None or isinstance(x, (bool, int, float, str, torch.dtype, torch.device)):
        return (type(x), x)
    if isinstance(x, slice):
        return ("S", x.start, x.stop, x.step)
    if isinstance(x, (list, tuple)) and depth < 4 and len(x) <= 64:
        return (type(x), tuple(_reference_sig(v, depth + 1) for v in x))
    if isinstance(x, dict) and depth < 4 and len(x) <= 64:
        return ("D", tuple((k, _reference_sig(v, depth + 1)) for k, v in x.items()))
    raise guards._Uncached


@pytest.mark.parametrize("value", _SIG_CASES, ids=lambda v: type(v).__name__)
def test_dry_run_keys_match_the_reference(value: object) -> None:
    key = guards._sig(value)
    assert key == _reference_sig(value) and hash(key) == hash(_reference_sig(value))


@pytest.mark.parametrize("value", [[object()], {"a": object()}, list(range(65)), [[[[[1]]]]]])
def test_dry_run_keys_refuse_what_they_did(value: object) -> None:
    with pytest.raises(guards._Uncached):
        _reference_sig(value)
    with pytest.raises(guards._Uncached):
        guards._sig(value)


def test_int_float_and_bool_keys_stay_apart() -> None:
    assert len({guards._sig([1]), guards._sig([1.0]), guards._sig([True]), guards._sig([_Int.ONE])}) == 4


@pytest.mark.parametrize(
    "value",
    [
        torch.zeros(2, 3),
        torch.nn.Parameter(torch.zeros(4)),
        1.5,
        3,
        True,
        None,
        2j,
        "ab",
        [1, torch.zeros(2)],
    ],
    ids=lambda v: type(v).__name__,
)
def test_metadata_fast_paths_match_the_general_walk(value: object) -> None:
    meta = codec.describe(value)
    if isinstance(value, torch.Tensor):
        shape, dtype = list(value.shape), codec.dtype_name(value.dtype)
        size, numel = value.numel() * value.element_size(), value.numel()
    elif isinstance(value, list):
        shape, dtype, numel = [2], None, 3
        size = 8 + 8
    elif isinstance(value, str):
        shape, dtype, size, numel = None, None, 2, 1
    else:
        shape, dtype, numel = None, None, 1
        size = {type(None): 0, bool: 1, int: 8, float: 8, complex: 16}[type(value)]
    assert meta == {
        "type": type(value).__name__,
        "shape": shape,
        "dtype": dtype,
        "size_bytes": size,
        "numel": numel,
    }
    assert list(meta) == ["type", "shape", "dtype", "size_bytes", "numel"]


def test_tensor_metadata() -> None:
    t = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    assert store._meta(t) == {
        "type": "Tensor",
        "shape": [2, 3],
        "dtype": "float64",
        "size_bytes": 48,
        "numel": 6,
        "requires_grad": True,
    }


def test_log_arguments_read_as_kind_says() -> None:
    args = [torch.zeros(2, 3), 1, [torch.zeros(1), 2], {"a": 1}, torch.nn.Parameter(torch.zeros(2)), None]
    kwargs = {"dim": 1, "out": torch.zeros(4)}
    expected = ", ".join([kind(a) for a in args] + [f"{k}={kind(v)}" for k, v in kwargs.items()])[:300]
    assert str(ArgKinds(args, kwargs)) == expected
    assert str(ArgKinds([], {})) == ""
    assert str(ArgKinds([torch.zeros(1)] * 100, {})) == ", ".join(["Tensor[1]"] * 100)[:300]


def test_log_rows_hold_nothing_the_garbage_collector_must_follow() -> None:
    """Rows are numbers, strings and tuples of them: once collections have looked at them (a tuple is let go
    once its items are, so one collection per level) the GC no longer tracks them; 100,000 tracked rows
    would make every full collection walk ~400,000 more objects."""
    log = ActivityLog()
    args = [torch.zeros(2, 3), 1, [torch.zeros(1), 2], {"a": 1}, torch.nn.Parameter(torch.zeros(2)), None]
    log.record(
        0.0, "torch.cat", ArgKinds(args, {"dim": 1, "out": torch.zeros(4)}), "Tensor", [3, 4], "ok", 0.1
    )
    log.record(1.0, "torch.add", "Tensor[2]", "Tensor", [2], "ok", 0.5)
    log.record(2.0, "torch.save", "", None, None, "PermissionDenied", 0.0)
    for _ in range(3):
        gc.collect()
    assert [gc.is_tracked(row) for row in log._rows] == [False, False, False]
    first = log.rows()[0]
    assert first.args == str(ArgKinds(args, {"dim": 1, "out": torch.zeros(4)}))
    assert first.args.startswith(
        "Tensor[2, 3], int, list[Tensor[1],int], dict[1], Tensor[2], NoneType, dim=int"
    )
    assert first.result_shape == "[3, 4]"


def test_log_rows_are_written_out_when_read() -> None:
    log = ActivityLog(limit=2)
    log.record(0.0, "Tensor.sum", ArgKinds([], {"dim": 1}), "Tensor", [3], "ok", 0.0012345)
    log.record(1.0, "torch.save", "", None, None, "PermissionDenied", 0.0)
    log.record(2.0, "torch.add", "Tensor[2]", "Tensor", [2], "ok", 0.5)
    assert (log.total, log.failed, len(log)) == (3, 1, 2)
    first, second = log.rows()
    assert (first.path, first.args, first.result_type, first.result_shape, first.status) == (
        "torch.save",
        "",
        "",
        "",
        "PermissionDenied",
    )
    assert second.time.timestamp() == 2.0 and second.time.tzinfo is not None
    assert (second.result_shape, second.duration_ms) == ("[2]", 500.0)
    assert log.summary()["most_used"] == [("torch.save", 1), ("torch.add", 1)]
    assert list(log.pandas.columns) == [
        "time",
        "path",
        "args",
        "result_type",
        "result_shape",
        "status",
        "duration_ms",
    ]


def test_inplace_flag_and_buffers_read_as_getattr_would() -> None:
    class Flagged(torch.nn.Module):
        inplace = True

    class Prop(torch.nn.Module):
        @property
        def inplace(self) -> bool:
            return True

    layers = [
        torch.nn.ReLU(inplace=True),
        torch.nn.ReLU(),
        torch.nn.Conv2d(1, 1, 1),
        torch.nn.Dropout(inplace=True),
        torch.nn.Sequential(torch.nn.ReLU(inplace=True)),
        Flagged(),
        Prop(),
    ]
    for m in layers:
        assert readonly._inplace_module(m) == (getattr(m, "inplace", False) is True), m
    for m in [
        *layers,
        torch.nn.BatchNorm1d(2),
        torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)),
    ]:
        assert readonly._has_buffers(m) == bool(list(m.buffers())), m


def test_graph_leaves_are_every_accumulated_tensor() -> None:
    c, fc = torch.nn.Conv2d(1, 2, 3), torch.nn.Linear(8, 3)
    loss = fc(torch.relu(c(torch.randn(4, 1, 4, 4))).flatten(1)).log_softmax(1).sum()
    leaves = store._graph_leaves(loss)
    assert leaves is not None
    assert {id(t) for t in leaves} == {id(p) for p in [*c.parameters(), *fc.parameters()]}


def test_the_allowlist_memo_answers_as_the_tables() -> None:
    x = torch.zeros(2)
    values = [
        x,
        torch.nn.Linear(1, 1),
        1.0,
        3,
        True,
        "s",
        [1],
        (1,),
        {},
        OrderedDict(),
        torch.Size([1]),
        object(),
    ]
    for v in values * 2:
        assert A.kind_of(v) == A._kind_of(v)
    for _ in range(2):
        A.check_method(x, "add")
        assert A.mutates(x, "add_") and not A.mutates(x, "add")
        with pytest.raises(Exception, match="not on the allowlist"):
            A.check_method(x, "numpy")
        with pytest.raises(Exception, match="not a method name"):
            A.check_method(x, ["add"])  # type: ignore[arg-type]
    assert A.call_method(x, "__add__", [1], {}).tolist() == [1.0, 1.0]
    with pytest.raises(Exception, match="Tensor.__add__ with a str operand"):
        A.call_method(x, "__add__", ["a"], {})


def test_a_result_over_the_tensor_limit_is_refused_as_before() -> None:
    with pytest.raises(QuotaExceeded, match=r"f would make 400 bytes, over the 100-byte limit"):
        guards.check_result(torch.zeros(100), 100, "f")
    guards.check_result(1.5, 0, "f")
    guards.check_result(None, 0, "f")


def test_decoding_shortcuts_keep_their_limits() -> None:
    assert codec.decode(["dict"], []) == {}
    assert codec.decode(["tuple", 1, None, ["slice", 0, 2, None]], []) == (1, None, slice(0, 2))
    with pytest.raises(ProtocolError, match="too many items"):
        codec.decode(["list", 1, 2, 3], [], max_items=3)
    with pytest.raises(ProtocolError, match="slice bounds"):
        codec.decode(["slice", 0, 1.5, None], [])
    with pytest.raises(ProtocolError, match="ptr node must have 1 fields"):
        codec.decode(["ptr", "a", "b"], [])
    assert codec.decode(["dict", -1, "a", -2, "b", 1.0, "c"], []) == {
        -1: "a",
        -2: "b",
        1.0: "c",
    }  # hash(-1) == hash(-2)


def test_warm_up_imports_what_the_first_elementwise_dry_run_needs() -> None:
    code = (
        "import sys\nfrom duet.remote import guards\nguards.warm_up()\n"
        "assert 'torch._dynamo' in sys.modules, 'the first meta add would import torch._dynamo'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_argument_shortcut_decodes_as_the_codec_does() -> None:
    from duet.remote.executor import Executor
    from duet.remote.store import Quotas, Store

    s = Store(Quotas())
    ex = Executor(s)
    x = s.publish(torch.ones(2), name="x", tags=("#t",))
    trees = [
        ["list", 1, 2.5, None, True, "a", b"b", ["ptr", x.id]],
        ["list"],
        ["dict", "dim", 1, "keepdim", False, "other", ["ptr", x.id]],
        ["dict", "a", 1, "a", 2],
        ["dict", 1, 2],  # a non-str key: the codec's way
        ["dict", "a"],  # odd: the codec's ProtocolError
        ["list", ["ptr", ""]],
        ["list", ["ptr", 5]],
        ["list", ["ptr", x.id, 1]],
        ["list", ["slice", 0, 1, None], ["tuple", 1]],
        ["list", *range(2000)],
        ["dict", *[f"k{i}" if j == 0 else i for i in range(9) for j in range(2)]],
        ["list", ["ptr", "s-unknown"]],
    ]
    for tree in trees:
        tags: set[str] = set()
        try:
            want: object = codec.decode(tree, [], make_pointer=lambda ref: s.lookup(ref).obj)
        except Exception as exc:  # noqa: BLE001
            want = type(exc)
        try:
            got: object = ex._decode(tree, [], tags)
        except Exception as exc:  # noqa: BLE001
            got = type(exc)
        assert type(got) is type(want) and repr(got) == repr(want), tree
        if "ptr" in repr(tree) and x.id in repr(tree) and not isinstance(got, type):
            assert tags == {"#t"}


def test_release_many_frees_scientist_objects_only() -> None:
    from duet.remote.store import Store

    s = Store()
    x = s.publish(torch.ones(3), name="x")
    s.put("s1", torch.ones(4))
    s.put("s2", torch.ones(5))
    assert s.release_many(["s1", x.id, "s9", 7, "s1"]) == 1
    assert s.scientist_objects == 1 and s.scientist_bytes == 20 and s.holds(x.id)


class _Tensor(torch.Tensor):
    pass


class _Str(str):
    pass


@pytest.mark.parametrize(
    "obj",
    [torch.ones(3), torch.nn.Parameter(torch.ones(3)), torch.ones(3).as_subclass(_Tensor), [1, 2], _List([1]),
     (1, 2), {"a": 1}, "ab", _Str("ab"), 1.5, 3, torch.nn.Linear(2, 2), None],
)  # fmt: skip
def test_a_binding_skips_the_item_check_only_where_it_can_refuse_nothing(obj: object) -> None:
    """``guards.may_check_items`` (asked once per type by a plan's binding) is False only where
    ``check_items_before`` lets every call through, whatever its arguments."""
    huge = range(guards.MAX_ITEMS + 1)
    for name in (*guards.ITEM_METHODS, *guards._GROWERS, "sum", "__call__", "step"):
        if guards.may_check_items(obj, name):
            continue
        for args in ([huge], [list(huge)], [guards.MAX_ITEMS + 1], [1]):
            guards.check_items_before(obj, name, args, {})  # never raises
    assert guards.may_check_items(torch.ones(3), "tolist") and guards.may_check_items([1], "extend")
    with pytest.raises(QuotaExceeded):
        guards.check_items_before(list(range(10)), "extend", [list(huge)], {})
