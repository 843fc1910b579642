"""The client's per-call short cuts answer as the checks they stand for, under the remote's current tables."""

from __future__ import annotations

from typing import Any

import pytest

from duet.errors import PermissionDenied
from duet.remote.client import Remote
from duet.remote.pointer import GradContext, Pointer, RemoteNamespace
from duet.remote.tables import Tables


class _Ops(Remote):
    """A remote that keeps what it queues and answers metadata from a dict."""

    def __init__(self) -> None:
        super().__init__(lambda: None, lambda: "owner")  # type: ignore[arg-type,return-value]
        self.queued: list[dict[str, Any]] = []
        self.asked: list[str] = []
        self.types: dict[str, str] = {}

    def _queue(self, op: dict[str, Any], buffers: list[Any]) -> None:
        self.queued.append(op)

    def metadata(self, ptr: Pointer) -> dict[str, Any]:
        self.asked.append(ptr._duet_id)
        return {"type": self.types.get(ptr._duet_id, "Linear")}


def _without(remote: Remote, **drop: str) -> Tables:
    data = remote.tables.export()
    for field, name in drop.items():
        if field in ("functions", "contexts"):
            data[field] = [p for p in data[field] if p != name]
        else:
            data[field] = {k: [n for n in v if n != name] for k, v in data[field].items()}
    return Tables.parse(data)


def test_a_method_or_property_is_decided_once_per_tables_for_pointers_without_metadata() -> None:
    remote = _Ops()
    for _ in range(3):
        loss = Pointer(remote, "s1", owned=False)
        loss.backward()
        assert remote.queued[-1]["k"] == "meth" and remote.queued[-1]["n"] == "backward"
    assert remote.asked == []
    remote.tables = _without(remote, methods="backward")  # backward on no table: read as a property
    _ = Pointer(remote, "s2", owned=False).backward
    assert remote.queued[-1] == {"k": "attr", "s": "s2", "n": "backward", "o": remote.queued[-1]["o"]}


def test_a_name_both_a_property_and_a_method_asks_each_pointers_type_every_time() -> None:
    remote = _Ops()
    remote.types = {"d1": "dict", "t1": "return_types.max", "d2": "dict"}
    for oid, kind in (("d1", "meth"), ("t1", "attr"), ("d2", "meth")):
        ptr = Pointer(remote, oid, owned=False)
        out = ptr.values
        if kind == "meth":
            out()
        assert remote.queued[-1]["k"] == kind
    assert remote.asked == ["d1", "t1", "d2"]


def test_a_tensors_refused_name_is_refused_every_time() -> None:
    remote = _Ops()
    ptr = Pointer(remote, "s1", meta={"type": "Tensor"}, owned=False)
    for _ in range(2):
        with pytest.raises(PermissionDenied):
            _ = ptr.parameters


def test_a_namespace_asks_whether_it_is_a_context_under_the_current_tables() -> None:
    remote = _Ops()
    th = RemoteNamespace(remote, "torch")
    relu, no_grad = th.nn.functional.relu, th.no_grad
    for _ in range(2):
        relu(Pointer(remote, "x", owned=False))
        assert remote.queued[-1]["p"] == "torch.nn.functional.relu"
        assert isinstance(no_grad(), GradContext)
    remote.tables = _without(remote, contexts="torch.no_grad", functions="torch.no_grad")
    n = len(remote.queued)
    assert not isinstance(no_grad(), GradContext)  # (a name the namespace had already; now a call)
    assert remote.queued[n]["k"] == "call" and remote.queued[n]["p"] == "torch.no_grad"
