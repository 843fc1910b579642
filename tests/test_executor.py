"""The owner's executor without a network: op kinds, buffers, failures, contexts, quotas, published data."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from duet import codec
from duet.codec import PointerRef
from duet.errors import DuetError, PermissionDenied, ProtocolError, QuotaExceeded, RemoteError
from duet.remote import guards
from duet.remote.executor import Container, Executor
from duet.remote.store import Quotas, Store


class Owner:
    """A store and an executor, and a way to send them ops as the scientist's client would."""

    def __init__(self, **quotas: Any) -> None:
        self.store = Store(Quotas(**quotas))
        self.ex = Executor(self.store)
        self.n = 0
        self.failures: list[tuple[str, RemoteError]] = []

    def publish(self, obj: Any, name: str, tags: tuple[str, ...] = ()) -> PointerRef:
        return PointerRef(self.store.publish(obj, name=name, tags=tags).id)

    def new_id(self) -> str:
        self.n += 1
        return f"s{self.n}"

    def op(self, kind: str, fields: dict[str, Any], args: Any = None, kwargs: Any = None) -> PointerRef:
        """Run one op in its own frame; returns a reference to its result."""
        buffers: list[Any] = []
        out = self.new_id()
        op: dict[str, Any] = {"k": kind, "o": out, **fields}
        if args is not None:
            op["a"] = codec.encode(list(args), buffers)
        if kwargs:
            op["kw"] = codec.encode(kwargs, buffers)
        if buffers:
            op["b"] = [0, len(buffers)]
        self.failures += self.ex.run_ops([op], [bytes(b) for b in buffers])
        return PointerRef(out)

    def call(self, path: str, *args: Any, **kwargs: Any) -> PointerRef:
        return self.op("call", {"p": path}, args, kwargs)

    def meth(self, ref: PointerRef, name: str, *args: Any, **kwargs: Any) -> PointerRef:
        return self.op("meth", {"s": ref.id, "n": name}, args, kwargs)

    def attr(self, ref: PointerRef, name: str) -> PointerRef:
        return self.op("attr", {"s": ref.id, "n": name})

    def py(self, name: str, *args: Any) -> PointerRef:
        return self.op("py", {"n": name}, args)

    def value(self, ref: PointerRef) -> Any:
        entry = self.store.get(ref.id)
        if entry.error is not None:
            raise entry.error
        return entry.obj

    def error(self, ref: PointerRef) -> RemoteError:
        entry = self.store.get(ref.id)
        assert entry.error is not None, f"{ref.id} did not fail: {entry.obj!r}"
        return entry.error


@pytest.fixture
def owner() -> Owner:
    return Owner()


def refused(o: Owner, ref: PointerRef, kind: str, match: str = "") -> RemoteError:
    err = o.error(ref)
    assert err.remote_type == kind, err
    assert match in err.remote_message, err
    return err


# ---- op kinds --------------------------------------------------------------------------------------------


def test_call_meth_attr_py_put_mod(owner: Owner) -> None:
    x = owner.publish(torch.arange(6.0), "x", ("#x",))
    y = owner.call("torch.mul", x, 2)
    assert torch.equal(owner.value(y), torch.arange(6.0) * 2)
    assert owner.store.get(y.id).tags == ("#x",)  # tags follow the data
    r = owner.meth(y, "reshape", 2, 3)
    assert owner.value(owner.attr(r, "shape")) == torch.Size([2, 3])
    assert owner.value(owner.meth(r, "__getitem__", (slice(None), 1))).tolist() == [2.0, 8.0]
    assert owner.value(owner.meth(r, "__rsub__", 1)).tolist() == [[1, -1, -3], [-5, -7, -9]]
    f = owner.py("Float", 1.5)
    f2 = owner.meth(f, "__iadd__", owner.meth(x, "__getitem__", 1))  # float += 0-d tensor
    assert float(owner.value(f2)) == 2.5
    assert owner.value(owner.op("put", {"v": ["list", 1, "a", ["slice", None, 2, None]]})) == [
        1,
        "a",
        slice(2),
    ]
    lin = owner.call("torch.nn.Linear", 3, 2)
    box = owner.op("mod", {"c": {"fc": lin.id}, "n": "Net"})
    assert isinstance(owner.value(box), Container) and owner.store.get(box.id).meta["type"] == "Net"
    assert owner.value(owner.attr(box, "fc")) is owner.value(lin)
    assert owner.value(owner.call("torch.cuda.is_available")) is torch.cuda.is_available()


def test_put_decodes_the_frame_buffers(owner: Owner) -> None:
    buffers: list[Any] = []
    tree = codec.encode({"t": torch.arange(4, dtype=torch.int16)}, buffers)
    failures = owner.ex.run_ops(
        [{"k": "put", "o": "s1", "v": tree, "b": [0, 1]}], [bytes(b) for b in buffers]
    )
    assert failures == []
    assert owner.store.get("s1").obj["t"].tolist() == [0, 1, 2, 3]


def test_the_log_lists_each_call(owner: Owner) -> None:
    x = owner.publish(torch.zeros(2, 3), "x")
    owner.meth(x, "sum", dim=0)
    owner.call("torch.save", x, "f.pt")
    df = owner.ex.log.pandas
    assert list(df.columns) == [
        "time",
        "path",
        "args",
        "result_type",
        "result_shape",
        "status",
        "duration_ms",
    ]
    ok, bad = df.iloc[0], df.iloc[1]
    assert (ok.path, ok.args, ok.result_type, ok.result_shape, ok.status) == (
        "Tensor.sum",
        "dim=int",
        "Tensor",
        "[3]",
        "ok",
    )
    assert (bad.path, bad.status) == ("torch.save", "PermissionDenied")
    assert owner.ex.log.summary()["failed"] == 1


# ---- frames and malformed ops ------------------------------------------------------------------------------


def test_buffer_ranges_are_checked(owner: Owner) -> None:
    buffers: list[Any] = []
    a = codec.encode([torch.ones(2)], buffers)
    bufs = [bytes(b) for b in buffers]
    cases = [
        {"b": [0, 2]},  # more buffers than the frame has
        {"b": [1, 1]},
        {"b": [0]},
        {"b": [-1, 1]},
        {"b": "0:1"},
        {"b": [True, 1]},
    ]
    for extra in cases:
        out = owner.new_id()
        owner.ex.run_ops([{"k": "call", "o": out, "p": "torch.clone", "a": a, **extra}], bufs)
        refused(owner, PointerRef(out), "ProtocolError", "buffer")
    # two ops may not claim the same buffer, nor one tensor a buffer twice
    ops = [
        {"k": "call", "o": "s100", "p": "torch.clone", "a": a, "b": [0, 1]},
        {"k": "call", "o": "s101", "p": "torch.clone", "a": a, "b": [0, 1]},
    ]
    owner.ex.run_ops(ops, bufs)
    assert torch.equal(owner.value(PointerRef("s100")), torch.ones(2))
    refused(owner, PointerRef("s101"), "ProtocolError", "another op took")
    twice = ["list", a[1], a[1]]
    owner.ex.run_ops(
        [{"k": "call", "o": "s102", "p": "torch.stack", "a": ["list", twice], "b": [0, 1]}], bufs
    )
    refused(owner, PointerRef("s102"), "ProtocolError", "used twice")


def test_malformed_ops_are_refused_and_reported(owner: Owner) -> None:
    with pytest.raises(ProtocolError):
        owner.ex.run_ops({"k": "call"}, [])
    failures = owner.ex.run_ops(
        [
            42,
            "call",
            {"o": "s1"},
            {"k": 7, "o": "s2"},
            {"k": "exec", "o": "s3", "p": "print"},
            {"k": "call", "p": "torch.zeros", "a": ["list", 1]},  # no result id
            {"k": "call", "o": "p123456", "p": "torch.zeros", "a": ["list", 1]},  # not a scientist id
            {"k": "call", "o": "s4", "p": "torch.zeros", "a": {"not": "a tree"}},
            {"k": "call", "o": "s5", "p": "torch.zeros", "a": ["dict", "k", 1]},
            {"k": "call", "o": "s6", "p": "torch.zeros", "a": ["list", 1], "kw": ["dict", 1, 2]},
            {"k": "call", "o": "s7", "p": 12},
            {"k": "meth", "o": "s8", "s": "s999", "n": "sum"},
            {"k": "meth", "o": "s9", "s": ["x"], "n": "sum"},
            {"k": "ctx", "p": "torch.no_grad", "e": "yes"},
            {"k": "del", "ids": "s1"},
        ],
        [],
    )
    kinds = [(oid, e.remote_type) for oid, e in failures]
    assert kinds == [
        ("", "ProtocolError"),
        ("", "ProtocolError"),
        ("s1", "ProtocolError"),
        ("s2", "ProtocolError"),
        ("s3", "ProtocolError"),
        ("", "ProtocolError"),
        ("", "ProtocolError"),  # the error itself cannot be stored under a bad id
        ("s4", "ProtocolError"),
        ("s5", "ProtocolError"),
        ("s6", "ProtocolError"),
        ("s7", "ProtocolError"),
        ("s8", "PermissionDenied"),
        ("s9", "ProtocolError"),
        ("", "ProtocolError"),
        ("", "ProtocolError"),
    ]
    assert owner.store.scientist_objects == 9  # the errors, under the ids that could hold them
    # an id can hold one object only
    owner.ex.run_ops([{"k": "call", "o": "s4", "p": "torch.zeros", "a": ["list", 1]}], [])
    refused(owner, PointerRef("s4"), "ProtocolError")  # still the first error


def test_del_frees_scientist_objects_never_published_ones(owner: Owner) -> None:
    x = owner.publish(torch.ones(3), "x")
    y = owner.meth(x, "__mul__", 2)
    assert owner.store.scientist_objects == 1
    assert owner.ex.run_ops([{"k": "del", "ids": [y.id, x.id, "s404", 17, None]}], []) == []
    assert owner.store.scientist_objects == 0 and len(owner.store) == 1
    refused(owner, owner.meth(y, "sum"), "PermissionDenied", "no object with id")


# ---- failures -----------------------------------------------------------------------------------------------


def test_a_failure_propagates_to_everything_that_uses_it(owner: Owner) -> None:
    a, b = owner.call("torch.ones", 2, 3), owner.call("torch.ones", 4, 5)
    c = owner.call("torch.matmul", a, b)
    first = refused(owner, c, "RuntimeError", "cannot be multiplied")
    d = owner.meth(c, "__add__", 1)
    e = owner.call("torch.stack", [a, d])
    assert owner.error(d) is first and owner.error(e) is first
    assert [oid for oid, _ in owner.failures] == [c.id]  # reported once: the others fail where used
    assert owner.value(owner.meth(a, "sum")) == 6  # the rest goes on


def test_error_detail_off_hides_messages_but_not_duet_refusals() -> None:
    o = Owner(error_detail=False)
    c = o.call("torch.matmul", o.call("torch.ones", 2, 3), o.call("torch.ones", 4, 5))
    assert (o.error(c).remote_type, o.error(c).remote_message) == ("RuntimeError", "")
    refused(o, o.call("torch.load", "x.pt"), "PermissionDenied", "torch.load")


# ---- contexts --------------------------------------------------------------------------------------------------


def test_grad_contexts_nest_and_are_bounded(owner: Owner) -> None:
    w = owner.meth(owner.call("torch.ones", 2), "requires_grad_")

    def grad_of_result() -> bool:
        return bool(owner.value(owner.meth(w, "__mul__", 2)).requires_grad)

    def ctx(path: str, enter: bool) -> list[tuple[str, RemoteError]]:
        return owner.ex.run_ops([{"k": "ctx", "p": path, "e": enter}], [])

    assert grad_of_result()
    ctx("torch.no_grad", True)
    assert not grad_of_result()
    ctx("torch.enable_grad", True)
    assert grad_of_result()
    ctx("torch.enable_grad", False)
    assert not grad_of_result()
    ctx("torch.no_grad", False)
    assert grad_of_result()
    ctx("torch.no_grad", False)  # leaving more than entered changes nothing
    assert grad_of_result()
    for bad in ("torch.set_grad_enabled", "torch.autograd.graph.saved_tensors_hooks", "torch.save", 3):
        [(_, err)] = ctx(bad, True)  # type: ignore[arg-type]
        assert err.remote_type == "PermissionDenied"
    for _ in range(32):
        assert ctx("torch.no_grad", True) == []
    [(_, err)] = ctx("torch.no_grad", True)
    assert err.remote_type == "QuotaExceeded"
    for _ in range(32):
        ctx("torch.no_grad", False)
    assert grad_of_result()


# ---- quotas --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda o, v: o.call("torch.zeros", 25_000_000_000),
        lambda o, v: o.call("torch.ones", 100_000, 100_000, dtype=torch.float64),
        lambda o, v: o.call("torch.full", (50_000, 50_000), 1.0),
        lambda o, v: o.call("torch.arange", 0, 10**11),
        lambda o, v: o.call("torch.eye", 10**6),
        lambda o, v: o.call("torch.randint", 0, 9, (10**6, 10**6)),
        lambda o, v: o.call("torch.linspace", 0, 1, 10**10),
        lambda o, v: o.call("torch.outer", v, v),
        lambda o, v: o.call("torch.einsum", "i,j->ij", v, v),
        lambda o, v: o.call("torch.cdist", o.meth(v, "unsqueeze", 1), o.meth(v, "unsqueeze", 1)),
        lambda o, v: o.meth(
            o.meth(v, "__getitem__", (slice(None), None)), "__mul__", o.meth(v, "__getitem__", None)
        ),
        lambda o, v: o.meth(v, "repeat", 10**6),
        lambda o, v: o.meth(v, "new_full", (10**6, 10**6), 0.0),
        lambda o, v: o.meth(v, "expand", 10**6, 10**6),
        lambda o, v: o.call("torch.nn.functional.pad", v, (0, 10**10)),
        lambda o, v: o.call("torch.nn.functional.one_hot", o.meth(v, "long"), num_classes=10**6),
        lambda o, v: o.call("torch.nn.Linear", 100_000, 100_000),
        lambda o, v: o.call("torch.nn.Embedding", 10**9, 64),
        lambda o, v: o.meth(o.call("torch.nn.Linear", 1, 10**6), "__call__", o.meth(v, "unsqueeze", 1)),
    ],
)
def test_huge_allocations_are_refused_before_they_happen(build: Any) -> None:
    o = Owner()
    v = o.call("torch.zeros", 1_000_000)
    ref = build(o, v)
    err = refused(o, ref, "QuotaExceeded", "limit")
    assert "bytes" in err.remote_message or "items" in err.remote_message
    assert o.store.scientist_bytes < 30 << 20  # v and its views, nothing huge


def test_tensor_quota_also_bounds_what_the_scientist_sends() -> None:
    o = Owner(tensor_bytes=1000)
    refused(o, o.call("torch.clone", torch.zeros(1000)), "QuotaExceeded")
    assert torch.equal(o.value(o.call("torch.clone", torch.zeros(10))), torch.zeros(10))
    refused(o, o.call("torch.zeros", 1000), "QuotaExceeded")


def test_store_and_object_quotas() -> None:
    o = Owner(store_bytes=10_000, objects=5)
    a = o.call("torch.zeros", 1000)  # 4,000 bytes
    b = o.call("torch.zeros", 1000)
    refused(o, o.call("torch.zeros", 1000), "QuotaExceeded", "store quota")
    o.ex.run_ops([{"k": "del", "ids": [a.id]}], [])
    c = o.call("torch.zeros", 1000)
    assert o.value(c).shape == (1000,)
    for _ in range(2):
        o.py("Int", 1)
    assert o.store.scientist_objects == 5  # b, c, the refusal (an error entry), two Ints
    refused(o, o.py("Int", 2), "QuotaExceeded", "at most 5 objects")
    del b


def test_call_time_quota_drops_the_result() -> None:
    o = Owner()
    # sorting 1M float64 takes ~0.1 s even on a fast core, never under 1 ms (and the FLOP guard does not
    # count a sort: only the check after the call can catch it)
    a = o.call("torch.rand", 1_000_000, dtype=torch.float64)
    o.ex.quotas = Quotas(call_seconds=0.001)  # made under the default limit; the sort runs under this one
    slow = o.call("torch.sort", a)
    err = refused(o, slow, "QuotaExceeded", "limit for one call")
    assert "torch.sort ran" in err.remote_message
    assert o.store.scientist_bytes <= 1_000_000 * 8  # only the input: the refused result is not kept


def test_call_seconds_sets_the_flop_bound_too() -> None:
    o = Owner()
    a = o.call("torch.rand", 2000, 2000)  # a @ a is 16 GFLOP: refused at 0.1 s (5 GFLOP), admitted at 1 s
    o.ex.quotas = Quotas(call_seconds=0.1)
    err = refused(o, o.call("torch.matmul", a, a), "QuotaExceeded", "GFLOP")
    assert "torch.matmul" in err.remote_message
    o.ex.quotas = Quotas(call_seconds=1.0)
    assert o.value(o.call("torch.matmul", a, a)).shape == (2000, 2000)


# ---- Python values ------------------------------------------------------------------------------------------


def test_python_values_cannot_grow_without_bound(owner: Owner) -> None:
    big = owner.call("torch.zeros", 2_000_000)
    refused(owner, owner.meth(big, "tolist"), "QuotaExceeded", "items")
    refused(owner, owner.meth(big, "unbind"), "QuotaExceeded", "items")
    refused(owner, owner.meth(big, "split", 1), "QuotaExceeded", "items")
    refused(owner, owner.py("List", big), "QuotaExceeded", "items")
    assert len(owner.value(owner.meth(big, "chunk", 4))) == 4
    lst = owner.py("List", list(range(1000)))
    for _ in range(9):
        lst = owner.meth(lst, "__add__", lst)
    assert len(owner.value(lst)) == 512_000
    refused(owner, owner.meth(lst, "__add__", lst), "QuotaExceeded", "items")
    refused(owner, owner.meth(lst, "extend", lst), "QuotaExceeded", "items")
    # a list holding itself twice would make the metadata walk exponential: bounded instead
    loop = owner.py("List", [])
    owner.meth(loop, "append", loop)
    owner.meth(loop, "append", loop)
    refused(owner, owner.meth(loop, "copy"), "QuotaExceeded", "cycle")
    refused(owner, owner.py("Tuple", [loop]), "QuotaExceeded", "cycle")
    n = owner.py("Int", 3)
    for _ in range(16):  # 3 ** 2**16 has 103,872 bits
        n = owner.meth(n, "__mul__", n)
    refused(owner, n, "QuotaExceeded", "bits")


# ---- published data is read-only ------------------------------------------------------------------------------


def test_published_tensors_cannot_be_changed(owner: Owner) -> None:
    data = torch.arange(6.0)
    x = owner.publish(data, "x")
    attempts = [
        owner.meth(x, "__setitem__", 0, 100.0),
        owner.meth(x, "zero_"),
        owner.meth(x, "__iadd__", 1),
        owner.meth(x, "requires_grad_"),
        owner.meth(owner.meth(x, "__getitem__", slice(0, 2)), "fill_", 7.0),
        owner.meth(owner.meth(x, "detach"), "add_", 1),
        owner.meth(owner.attr(x, "data"), "mul_", 0),
        owner.meth(owner.meth(x, "view", 2, 3), "__setitem__", 0, 1.0),
        owner.call("torch.nn.functional.relu", x, inplace=True),
        owner.call("torch.nn.functional.relu", x, True),
        owner.call("torch.nn.functional.dropout", x, 0.5, True, True),
        owner.meth(owner.call("torch.nn.ReLU", inplace=True), "__call__", x),
        owner.call("torch.optim.SGD", [x], lr=0.1),
    ]
    for ref in attempts:
        refused(owner, ref, "PermissionDenied", "read-only")
    assert torch.equal(data, torch.arange(6.0)) and not data.requires_grad
    # copies are the scientist's to change
    c = owner.meth(x, "clone")
    owner.meth(c, "__setitem__", 0, 100.0)
    owner.meth(c, "add_", 1)
    assert owner.value(c).tolist() == [101.0, 2, 3, 4, 5, 6]
    d = owner.meth(owner.meth(x, "detach"), "requires_grad_")  # a new tensor's flag, same memory
    assert owner.value(d).requires_grad and not data.requires_grad
    assert owner.value(owner.call("torch.nn.functional.relu", x)).tolist() == data.tolist()


def test_published_models_and_lists_are_read_only(owner: Owner) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    m = owner.publish(net, "model")
    owner.meth(m, "eval")  # mode switches change no value
    out = owner.meth(m, "__call__", torch.ones(3, 2))
    assert owner.value(out).shape == (3, 2)
    owner.meth(m, "train")
    refused(owner, owner.meth(m, "__call__", torch.ones(3, 2)), "PermissionDenied", "read-only")  # batch norm
    owner.meth(m, "eval")
    refused(
        owner, owner.meth(m, "load_state_dict", {k: v * 0 for k, v in before.items()}), "PermissionDenied"
    )
    refused(owner, owner.call("torch.optim.Adam", owner.meth(m, "parameters")), "PermissionDenied")
    params = owner.meth(m, "parameters")
    refused(owner, owner.call("torch.optim.SGD", [{"params": params}], lr=1.0), "PermissionDenied")
    w = owner.attr(owner.meth(m, "__getitem__", 0), "weight")
    refused(owner, owner.meth(w, "add_", 1), "PermissionDenied")
    box = owner.op("mod", {"c": {"inner": m.id}})
    refused(owner, owner.meth(box, "half"), "PermissionDenied")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    lst = owner.publish([1, 2, [3]], "lst")
    refused(owner, owner.meth(lst, "append", 4), "PermissionDenied")
    refused(owner, owner.meth(owner.meth(lst, "__getitem__", 2), "append", 4), "PermissionDenied")
    assert owner.value(owner.meth(lst, "__add__", [4])) == [1, 2, [3], 4]


def test_scientist_models_train_normally(owner: Owner) -> None:
    torch.manual_seed(0)
    x = owner.publish(torch.randn(32, 4), "x")
    y = owner.publish(torch.randn(32, 1), "y")
    lin = owner.call("torch.nn.Linear", 4, 1)
    opt = owner.call("torch.optim.SGD", owner.meth(lin, "parameters"), lr=0.1)
    losses = []
    for _ in range(5):
        owner.meth(opt, "zero_grad")
        loss = owner.call("torch.nn.functional.mse_loss", owner.meth(lin, "__call__", x), y)
        owner.meth(loss, "backward")
        owner.meth(opt, "step")
        losses.append(owner.value(owner.meth(loss, "item")))
    assert losses[-1] < losses[0]
    assert owner.failures == []


def test_dry_runs_are_cached_by_shape() -> None:
    lin = torch.nn.Linear(3, 2)
    x = torch.zeros(4, 3)
    guards.dry_run_module(lin, [x], {}, 1 << 20)
    with pytest.raises(QuotaExceeded):
        guards.dry_run_module(lin, [x], {}, 10)  # the cached size, checked against this limit
    guards.dry_run_method(x, "__add__", [1], {}, 1 << 20)
    with pytest.raises(QuotaExceeded):
        guards.dry_run_method(torch.zeros(10**5), "repeat", [10**4], {}, 1 << 30)


def test_basic_indexing_makes_a_view_and_is_not_dry_run_but_advanced_indexing_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x = torch.zeros(1000, 10)  # 40,000 bytes
    runs: list[Any] = []
    real = guards._dry
    monkeypatch.setattr(guards, "_dry", lambda key, *a: (runs.append(key[2]), real(key, *a)))
    for index in (slice(0, 32), (slice(None), 3), (None, Ellipsis, 0), slice(1, None, 2), 5):
        guards.dry_run_method(x, "__getitem__", [index], {}, 100)  # a view: under any limit
        assert x[index].untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    assert runs == []
    many = torch.zeros(5000, dtype=torch.long)  # each row again: a copy of 200,000 bytes
    for index in (many, [0] * 5000, (many, slice(None)), True):
        with pytest.raises(QuotaExceeded):
            guards.dry_run_method(x, "__getitem__", [index], {}, 100)
    assert len(runs) == 4


def test_quotas_can_change_during_a_session(owner: Owner) -> None:
    owner.store.quotas = dataclasses.replace(owner.store.quotas, tensor_bytes=100)
    refused(owner, owner.call("torch.zeros", 1000), "QuotaExceeded")
    assert isinstance(owner.ex.quotas, Quotas) and owner.ex.quotas.tensor_bytes == 100


def test_errors_are_duet_errors() -> None:
    assert issubclass(QuotaExceeded, DuetError) and issubclass(PermissionDenied, DuetError)
