"""End to end, issue 3: the owner's store and request queue, with the owner in its own process.

The scientist is this process; the owner runs tests/peers/owner.py and is driven by line commands (``exec``,
``eval``, ``wait``). One owner serves the module's ordinary checks (``pair``); join approval and the sqlite
record need owners of their own.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import hashlib
import json
import math
import os
import sqlite3
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import Peer

import duet
from duet import codec

STORE_COLUMNS = ["id", "name", "tags", "description", "type", "shape", "dtype", "size_bytes"]
REQUEST_COLUMNS = [
    "id",
    "name",
    "reason",
    "requester",
    "object_id",
    "object_type",
    "shape",
    "status",
    "created_at",
]

PUBLISH = """
d.store.publish(torch.arange(12, dtype=torch.float32).reshape(3, 4), name="ages", tags=["#ages", "#2021"],
                description="Ages of patients, ward 3")
d.store.publish(torch.tensor([1, 0, 1]), name="labels", tags=["#labels"], description="outcome per patient")
d.store.publish(torch.zeros(2, 2, dtype=torch.float16), name="half")
d.store.publish(torch.tensor([True, False]), name="mask", tags=["#mask"])
d.store.publish(42, name="answer", description="a Python int")
d.store.publish("Station Nord-7", name="ward", tags=["#text"])
d.store.publish([1, 2, 3], name="list")
d.store.publish({"a": 1, "b": 2.5}, name="dict")
d.store.publish((1.0, 2.0), name="tuple")
torch.manual_seed(0)
d.store.publish(torch.nn.Linear(4, 2), name="model", tags=["#model"], description="a tiny model")
"""


# ---- helpers ------------------------------------------------------------------------------------------


def ask(owner: Peer, expr: str, timeout: float = 30) -> Any:
    """The JSON value of an expression evaluated in the owner's process."""
    owner.send("eval " + expr)
    return json.loads(" ".join(owner.expect("VAL", timeout)[1:]))


def owner_waits(owner: Peer, expr: str, timeout: float = 10) -> None:
    """Block until ``expr`` holds in the owner's process (re-checked on each of its request-queue events)."""
    owner.send(f"wait {timeout} {expr}")
    assert owner.expect("WAITED", timeout + 10)[1] == "True", f"the owner never saw {expr}"


def start_owner(signaling_url: str, *args: str) -> Peer:
    owner = Peer("owner.py", "--url", signaling_url, *args)
    owner.session_id = owner.expect("SESSION", 60)[1]  # type: ignore[attr-defined]
    return owner


def join(owner: Peer, signaling_url: str, name: str = "alice") -> duet.Duet:
    d = duet.join_duet(owner.session_id, signaling_url=signaling_url, name=name)  # type: ignore[attr-defined]
    owner.send("wait-peer")
    owner.expect("CONNECTED")
    return d


@contextlib.contextmanager
def own_identity(directory: Path) -> Iterator[None]:
    """A scientist made meanwhile has an identity of its own (the owner process shares the tests' config
    dir, so otherwise both would carry the same key and fingerprint)."""
    old = os.environ.get("DUET_CONFIG_DIR")
    os.environ["DUET_CONFIG_DIR"] = str(directory)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("DUET_CONFIG_DIR", None)
        else:
            os.environ["DUET_CONFIG_DIR"] = old


@pytest.fixture(scope="module")
def pair(signaling_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Peer, duet.Duet]]:
    """One owner process with the published objects above, and this process joined as the scientist."""
    owner = start_owner(signaling_url)
    try:
        owner.run(PUBLISH)
        with own_identity(tmp_path_factory.mktemp("alice")):
            d = join(owner, signaling_url)
        try:
            yield owner, d
        finally:
            d.close()
    finally:
        owner.close()


@pytest.fixture
def session(pair: tuple[Peer, duet.Duet]) -> Iterator[tuple[Peer, duet.Duet]]:
    """The shared session, with no handler and nothing pending when the test starts and ends."""
    owner, _ = pair
    owner.run("d.requests.clear_handlers()")
    yield pair
    owner.run("d.requests.clear_handlers()\nfor r in list(d.requests): r.deny('test over')")


def history(owner: Peer, names: list[str]) -> dict[str, dict[str, Any]]:
    """The owner's history rows (decision, decided_by, decided_at...) of the requests with these names."""
    rows = ask(owner, "d.requests.history.pandas.to_dict('records')")
    return {r["name"]: r for r in rows if r["name"] in names}


# ---- 1. publishing --------------------------------------------------------------------------------------


def test_published_values_come_home_intact(session: tuple[Peer, duet.Duet]) -> None:
    owner, d = session
    owner.run(  # (the metadata test below removes "ward"; run alone or after it, this one still finds it)
        'if "ward" not in [e.name for e in d.store]: d.store.publish("Station Nord-7", name="ward", tags=["#text"])'
    )
    owner.run('d.requests.add_handler(name="fetch", action="accept")')
    tensors = {
        "ages": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "labels": torch.tensor([1, 0, 1]),
        "half": torch.zeros(2, 2, dtype=torch.float16),
        "mask": torch.tensor([True, False]),
    }
    for name, want in tensors.items():
        got = d.store[name].get(request_block=True, name="fetch", timeout_secs=10)
        assert isinstance(got, torch.Tensor), name
        assert (got.dtype, got.shape) == (want.dtype, want.shape), name
        assert torch.equal(got, want), name
    values = {
        "answer": 42,
        "ward": "Station Nord-7",
        "list": [1, 2, 3],
        "dict": {"a": 1, "b": 2.5},
        "tuple": (1.0, 2.0),
    }
    for name, want in values.items():
        got = d.store[name].get(request_block=True, name="fetch", timeout_secs=10)
        assert type(got) is type(want) and got == want, (name, got)
    assert type(d.store["dict"].get(name="fetch")["b"]) is float
    rows = [r for r in ask(owner, "[[r.name, r.status] for r in d.requests.history]") if r[0] == "fetch"]
    assert rows == [["fetch", "accepted"]] * 10


def test_published_metadata_lookup_and_remove(session: tuple[Peer, duet.Duet]) -> None:
    owner, d = session
    df = d.store.pandas
    assert list(df.columns) == STORE_COLUMNS
    assert list(ask(owner, "list(d.store.pandas.columns)")) == STORE_COLUMNS
    rows = {r["name"]: r for r in df.to_dict("records")}
    assert list(rows) == [
        "ages",
        "labels",
        "half",
        "mask",
        "answer",
        "ward",
        "list",
        "dict",
        "tuple",
        "model",
    ]
    expected = {  # name: (type, shape, dtype, size_bytes)
        "ages": ("Tensor", [3, 4], "float32", 48),
        "labels": ("Tensor", [3], "int64", 24),
        "half": ("Tensor", [2, 2], "float16", 8),
        "mask": ("Tensor", [2], "bool", 2),
        "answer": ("int", None, None, 8),
        "ward": ("str", None, None, 14),
        "list": ("list", [3], None, 24),
        "dict": ("dict", [2], None, 18),  # keys count: 1 + 1 + 8 + 8
        "tuple": ("tuple", [2], None, 16),
        "model": ("Linear", None, "float32", 40),
    }
    for name, (kind, shape, dtype, size) in expected.items():
        row = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in rows[name].items()}
        got = (row["type"], row["shape"], row["dtype"], row["size_bytes"])
        assert got == (kind, shape, dtype, size), name
    assert rows["ages"]["tags"] == ["#ages", "#2021"]
    assert rows["ages"]["description"] == "Ages of patients, ward 3"
    assert rows["model"]["tags"] == ["#model"] and rows["half"]["tags"] == []
    # metadata only: the listing carries no values, and the owner's ids are the scientist's
    listing = d._scientist.remote.store_listing()  # type: ignore[union-attr]
    assert all(set(item) <= set(STORE_COLUMNS) | {"numel", "requires_grad", "published"} for item in listing)
    assert "Nord-7" not in json.dumps(listing)
    assert [i["id"] for i in listing] == ask(owner, "[e.id for e in d.store]")

    ids = {r["name"]: r["id"] for r in rows.values()}
    assert d.store["ages"]._duet_id == ids["ages"]
    assert d.store["#labels"]._duet_id == ids["labels"]  # by tag
    assert d.store[0]._duet_id == ids["ages"] and d.store[-1]._duet_id == ids["model"]  # by position
    assert d.store[ids["mask"][:8]]._duet_id == ids["mask"]  # by an id prefix
    ages = d.store["ages"]
    assert ages.shape == torch.Size([3, 4]) and ages.dtype == torch.float32  # metadata without a request
    for missing in ("nope", ids["ages"][:3], 99):
        with pytest.raises(KeyError):
            d.store[missing]

    ward = d.store["ward"]
    owner.run('d.store.remove("#text")')  # the owner removes by tag (name, position and prefix work too)
    assert "ward" not in list(d.store.pandas["name"])
    assert len(d.store) == 9
    with pytest.raises(KeyError):
        d.store["ward"]
    with pytest.raises(duet.PermissionDenied, match="no object"):
        ward.get()
    assert ask(owner, "len(d.store)") == 9


# ---- 2. grants, handlers, print_local, inherited tags -----------------------------------------------------


def test_get_without_grant_deny_and_accept_handlers(session: tuple[Peer, duet.Duet]) -> None:
    owner, d = session
    x = d.store["ages"]
    with pytest.raises(duet.PermissionDenied, match="request_block=True"):
        x.get()
    loss = (x.float() * 2).mean()
    owner.run('d.requests.add_handler(name="loss", action="deny", print_local=True)')
    with pytest.warns(UserWarning, match="'loss' was denied"):
        assert loss.get(request_block=True, name="loss", reason="training loss") is None
    line = " ".join(owner.expect("[duet]"))  # print_local: the owner sees the value it refused
    assert "'loss' denied" in line and line.endswith(": 11.0")
    with pytest.raises(duet.RequestDenied):
        loss.get(request_block=True, name="loss", strict=True)
    assert "'loss' denied" in " ".join(owner.expect("[duet]"))
    with pytest.raises(duet.PermissionDenied):  # a deny handler is not a grant either
        loss.get(name="loss")
    owner.expect("[duet]")

    owner.run('d.requests.add_handler(name="mean", action="accept")')
    assert x.float().mean().get(request_block=True, name="mean") == pytest.approx(5.5)
    assert x.float().mean().get(name="mean") == pytest.approx(5.5)  # a grant needs no request_block
    torch.testing.assert_close(x.get(name="mean"), torch.arange(12, dtype=torch.float32).reshape(3, 4))


def test_tag_handler_matches_computed_values(session: tuple[Peer, duet.Duet]) -> None:
    owner, d = session
    owner.run('key = d.requests.add_handler(tags=["#ages"], action="accept")')
    x, labels = d.store["ages"], d.store["labels"]
    assert x.float().mean().get(name="anything") == pytest.approx(5.5)  # tags are inherited by results
    assert (x[0, 0] + d.torch.ones(1)).get(name="own") == pytest.approx(
        1.0
    )  # the scientist's data is no source
    with pytest.raises(duet.PermissionDenied):
        labels.sum().get(name="untagged")  # no #ages, no grant
    # a value computed from #ages *and* other data is not an #ages value, however it was mixed in
    laundered = x[0, 0] + labels.float()[0]
    in_place = x.clone()  # (x.float() would be x itself, and published data is read-only)
    in_place.add_(labels.float().sum())  # the result pointer is dropped: the tensor it changed remembers
    assigned = x.clone()
    assigned[0, 0] = labels.float()[0]
    through_a_view = x.clone()
    through_a_view[0].copy_(labels.float()[:1].expand(4))
    for mixed in (laundered, in_place, assigned, through_a_view):
        with pytest.raises(duet.PermissionDenied):
            mixed.get(name="mixed")
    # a deny handler, the other way round, refuses whatever touched its tags
    owner.run('deny = d.requests.add_handler(tags=["#labels"], action="deny")')
    with pytest.warns(UserWarning, match="denied"):
        assert laundered.get(request_block=True, name="mixed-deny") is None
    rows = history(owner, ["anything", "own", "mixed", "mixed-deny"])
    assert rows["anything"]["decided_by"] == rows["own"]["decided_by"] == "handler:" + ask(owner, "key")
    assert rows["mixed"]["decided_by"] == "auto"
    assert rows["mixed-deny"]["decided_by"] == "handler:" + ask(owner, "deny")


# ---- 3. deciding by hand ---------------------------------------------------------------------------------


def test_owner_accepts_and_denies_by_hand(session: tuple[Peer, duet.Duet]) -> None:
    owner, d = session
    total = d.store["ages"].sum()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(total.get, request_block=True, name="total", reason="sum of ages", timeout_secs=30)
        owner_waits(owner, "len(d.requests) == 1")
        assert not fut.done()  # the scientist is blocked on the owner
        assert ask(owner, "list(d.requests.pandas.columns)") == REQUEST_COLUMNS
        (row,) = ask(owner, "d.requests.pandas.to_dict('records')")
        assert (row["name"], row["reason"], row["status"]) == ("total", "sum of ages", "pending")
        assert row["object_id"] == total._duet_id and row["object_type"] == "Tensor"
        assert row["created_at"]
        # the requester is the scientist, by name and by the fingerprint of its key
        assert d.fingerprint != ask(owner, "d.fingerprint")  # (two keys, so the check below can fail)
        assert ask(owner, "d.peer.fingerprint") == d.fingerprint
        assert row["requester"] == f"alice ({d.fingerprint})"
        # the decision travels back at once: no polling loop between accept() and the value
        arrived: concurrent.futures.Future[float] = concurrent.futures.Future()
        fut.add_done_callback(lambda _f: arrived.set_result(time.monotonic()))
        start = time.monotonic()
        owner.run("d.requests[0].accept()")  # the timed span includes the owner's exec and the pipe
        assert fut.result(10) == pytest.approx(66.0)
        took = arrived.result(10) - start
        print(f"value arrived {took * 1000:.0f} ms after the owner was told to accept")
        assert took < 0.5, f"the value arrived {took:.3f} s after accept()"

        fut = pool.submit(total.get, request_block=True, name="total2", strict=True)
        owner_waits(owner, "len(d.requests) == 1")
        owner.run('d.requests[0].deny(reason="not before the ethics board meets")')
        with pytest.raises(duet.RequestDenied, match="ethics board"):
            fut.result(10)
    rows = history(owner, ["total", "total2"])
    assert rows["total"]["decided_by"] == "owner" and rows["total"]["decision"] == "accepted"
    assert rows["total2"]["decision"] == "denied"
    assert rows["total2"]["deny_reason"] == "not before the ethics board meets"


def test_request_handle_status_and_wait(session: tuple[Peer, duet.Duet]) -> None:
    owner, d = session
    total = d.store["ages"].sum()
    handle = total.request(name="later", reason="for the report", timeout_secs=30)
    assert handle.status == "pending"
    owner_waits(owner, "len(d.requests) == 1")
    assert handle.status == "pending"
    with pytest.raises(duet.RequestTimeout):
        handle.wait(0.2)
    owner.run("d.requests[0].accept()")
    assert handle.wait(10) == pytest.approx(66.0)
    assert handle.status == "accepted"

    denied = total.request(name="later2")
    owner_waits(owner, "len(d.requests) == 1")
    owner.run('d.requests[0].deny(reason="no")')
    assert denied.wait(10) is None
    assert (denied.status, denied.deny_reason) == ("denied", "no")
    mine = d.requests.pandas
    assert {"later": "accepted", "later2": "denied"}.items() <= dict(
        zip(mine["name"], mine["status"])
    ).items()


def test_request_on_a_pointer_dropped_at_once(session: tuple[Peer, duet.Duet]) -> None:
    owner, d = session
    handle = d.store["ages"].sum().request(name="dropped-pointer", timeout_secs=30)
    gc.collect()  # the pointer is gone: the handle keeps the owner's object until the request is settled
    assert len(d.store) > 0  # a round trip that carries the scientist's releases to the owner
    owner.run("for r in list(d.requests): r.accept()")
    assert handle.wait(10) == pytest.approx(66.0)


# ---- 4. expiry --------------------------------------------------------------------------------------------


def test_undecided_requests_expire(session: tuple[Peer, duet.Duet]) -> None:
    owner, d = session
    total = d.store["ages"].sum()
    start = time.monotonic()
    with pytest.warns(UserWarning, match="not decided in time"):
        assert total.get(request_block=True, name="nobody", timeout_secs=1) is None
    assert 0.9 <= time.monotonic() - start < 5  # the owner's expiry runs every 0.25 s
    with pytest.raises(duet.RequestTimeout):
        total.get(request_block=True, name="nobody2", timeout_secs=0.5, strict=True)
    handle = total.request(name="nobody3", timeout_secs=0.5)
    assert handle.wait(5) is None and handle.status == "expired"
    mine = dict(zip(d.requests.pandas["name"], d.requests.pandas["status"]))
    assert mine["nobody"] == mine["nobody2"] == mine["nobody3"] == "expired"
    rows = history(owner, ["nobody", "nobody2", "nobody3"])
    assert {r["decided_by"] for r in rows.values()} == {"timeout"}
    assert {r["decision"] for r in rows.values()} == {"expired"}
    assert ask(owner, "len(d.requests)") == 0


# ---- 5. element quota ---------------------------------------------------------------------------------------


def test_element_quota_is_spent_then_requests_fall_through(session: tuple[Peer, duet.Duet]) -> None:
    owner, d = session
    labels = d.store["labels"]  # 3 elements
    owner.run('qkey = d.requests.add_handler(tags=["#labels"], action="accept", element_quota=5)')
    assert labels.get(name="q1").tolist() == [1, 0, 1]
    assert ask(owner, "int(d.requests.handlers.pandas.loc[0, 'remaining_quota'])") == 2
    with pytest.raises(duet.PermissionDenied):
        labels.get(name="q2")  # 3 elements > 2 left: the handler does not match, nothing else does
    assert labels[:2].get(name="q3").tolist() == [1, 0]  # 2 elements fit exactly
    with pytest.raises(duet.PermissionDenied):
        labels[0].get(name="q4")  # spent: even one element falls through
    quota = ask(owner, "d.requests.handlers.pandas.to_dict('records')")[0]
    assert (quota["element_quota"], quota["elements_released"], quota["remaining_quota"]) == (5, 5, 0)
    assert quota["status"] == "exhausted" and quota["key"] == ask(owner, "qkey")

    owner.run('d.requests.add_handler(name="q5", action="deny")')  # behind the spent one
    with pytest.warns(UserWarning, match="denied"):
        assert labels.get(request_block=True, name="q5") is None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # or the request waits for the owner
        fut = pool.submit(labels.get, request_block=True, name="q6", timeout_secs=30)
        owner_waits(owner, "len(d.requests) == 1")
        owner.run("d.requests[0].accept()")
        assert fut.result(10).tolist() == [1, 0, 1]
    rows = history(owner, ["q1", "q3", "q4", "q5", "q6"])
    quota_handler = "handler:" + ask(owner, "qkey")
    assert rows["q1"]["decided_by"] == rows["q3"]["decided_by"] == quota_handler
    assert rows["q4"]["decided_by"] == "auto" and rows["q6"]["decided_by"] == "owner"
    assert rows["q5"]["decided_by"].startswith("handler:") and rows["q5"]["decided_by"] != quota_handler


# ---- 6. history and its sqlite record -----------------------------------------------------------------------


def test_history_has_every_decision(session: tuple[Peer, duet.Duet]) -> None:
    owner, d = session
    x = d.store["ages"]
    owner.run('hkey = d.requests.add_handler(name="h-acc", action="accept")')
    owner.run('d.requests.add_handler(name="h-deny", action="deny")')
    x.sum().get(name="h-acc")
    with pytest.warns(UserWarning):
        x.sum().get(request_block=True, name="h-deny")
    with pytest.raises(duet.PermissionDenied):
        x.sum().get(name="h-auto")
    with pytest.warns(UserWarning):
        x.sum().get(request_block=True, name="h-exp", timeout_secs=0.3)
    handle = x.sum().request(name="h-own")
    owner_waits(owner, "len(d.requests) == 1")
    owner.run("d.requests[0].accept()")
    handle.wait(10)
    frame_columns = ask(owner, "list(d.requests.history.pandas.columns)")
    assert frame_columns[: len(REQUEST_COLUMNS)] == REQUEST_COLUMNS
    assert {"decision", "decided_by", "decided_at"} <= set(frame_columns)
    rows = history(owner, ["h-acc", "h-deny", "h-auto", "h-exp", "h-own"])
    hkey = ask(owner, "hkey")
    assert {n: (r["decision"], r["decided_by"]) for n, r in rows.items()} == {
        "h-acc": ("accepted", f"handler:{hkey}"),
        "h-deny": ("denied", rows["h-deny"]["decided_by"]),
        "h-auto": ("denied", "auto"),
        "h-exp": ("expired", "timeout"),
        "h-own": ("accepted", "owner"),
    }
    assert rows["h-deny"]["decided_by"].startswith("handler:")
    for r in rows.values():
        assert r["created_at"] <= r["decided_at"]  # ISO strings of UTC times compare as times


SMALL = 'd.store.publish(torch.arange(6.0), name="ages", tags=["#ages"], description="six ages")'


def test_history_is_in_sqlite_and_survives_a_killed_owner(signaling_url: str, tmp_path: Path) -> None:
    db = tmp_path / "record.sqlite"
    first = start_owner(signaling_url, "--db", str(db))
    try:
        first.run(SMALL + '\nkey = d.requests.add_handler(name="ok", action="accept")')
        d = join(first, signaling_url)
        con = sqlite3.connect(db)

        def record() -> dict[str, tuple[str, str | None]]:
            return {n: (s, by) for n, s, by in con.execute("SELECT name, status, decided_by FROM requests")}

        x = d.store["ages"]
        assert x.sum().get(name="ok") == 15.0
        assert record()["ok"] == ("accepted", "handler:" + ask(first, "key"))  # written before the reply
        handle = x.mean().request(name="manual")
        owner_waits(first, "len(d.requests) == 1")
        assert record()["manual"] == ("pending", None)  # written on submission too
        first.run('d.requests[0].deny("later")')
        assert handle.wait(10) is None
        assert record()["manual"] == ("denied", "owner")
        with pytest.warns(UserWarning):
            x.max().get(request_block=True, name="late", timeout_secs=0.3)
        assert record()["late"] == ("expired", "timeout")
        (published,) = con.execute("SELECT name, tags, description, removed_at FROM objects").fetchall()
        assert published == ("ages", '["#ages"]', "six ages", None)
        first.run('d.store.remove("ages")')
        assert con.execute("SELECT removed_at FROM objects").fetchone()[0] is not None
        earlier = ask(first, "d.requests.history.session")
        first.kill()  # SIGKILL: no chance to close the database
        con.close()
        d.close()
    finally:
        first.close()
    second = start_owner(signaling_url, "--db", str(db))
    try:
        rows = {r["name"]: r for r in ask(second, "d.requests.history.pandas.to_dict('records')")}
        assert {n: (r["decision"], r["decided_by"], r["session"]) for n, r in rows.items()} == {
            "ok": ("accepted", rows["ok"]["decided_by"], earlier),
            "manual": ("denied", "owner", earlier),
            "late": ("expired", "timeout", earlier),
        }
        assert rows["manual"]["deny_reason"] == "later"
        assert ask(second, "d.requests.history.session") != earlier
    finally:
        second.close()


# ---- 7. join approval -----------------------------------------------------------------------------------------


def test_join_approval(signaling_url: str, tmp_path: Path) -> None:
    from test_hostile_e2e import attach_without_hello, call

    owner = start_owner(signaling_url, "--approve-join")  # one process, a new session for each case
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            # accepted by the owner, by hand: join_duet blocks until then
            with own_identity(tmp_path / "carol"):  # a key of carol's own, unlike the owner's
                joining = pool.submit(
                    duet.join_duet, owner.session_id, signaling_url=signaling_url, name="carol"
                )
                owner_waits(owner, "len(d.requests) == 1")
            assert ask(owner, "(d.requests[0].kind, d.requests[0].name)") == ["join", "join"]
            requester = ask(owner, "d.requests[0].requester")
            seen = ask(owner, "d.peer.fingerprint")  # the fingerprint of the key the owner verified
            assert requester == f"carol ({seen})" and seen != ask(owner, "d.fingerprint")
            assert not joining.done()
            owner.run("d.requests[0].accept()")
            carol = joining.result(15)
            assert carol.fingerprint == seen  # the join request named the scientist that joined
            assert carol.status == "connected" and len(carol.store) == 0
            carol.close()
            assert ask(owner, "d.requests.history[-1].decided_by") == "owner"

            # denied: join_duet raises at once and both sides close
            owner.send("relaunch")
            owner.session_id = owner.expect("SESSION")[1]  # type: ignore[attr-defined]
            joining = pool.submit(duet.join_duet, owner.session_id, signaling_url=signaling_url, name="eve")
            owner_waits(owner, "len(d.requests) == 1")
            owner.run('d.requests[0].deny(reason="unknown lab")')
            start = time.monotonic()
            with pytest.raises(duet.PermissionDenied, match="unknown lab"):
                joining.result(15)
            assert time.monotonic() - start < 3
            owner.send("wait-closed 10")
            assert owner.expect("CLOSED", 15)[1] == "True"

        # accepted by a join handler; before that, no other message is served
        owner.send("relaunch")
        owner.session_id = owner.expect("SESSION")[1]  # type: ignore[attr-defined]
        owner.run('d.requests.add_handler(name="join", action="accept")\nd.store.publish(1, name="one")')
        raw = attach_without_hello(owner.session_id, signaling_url)  # type: ignore[attr-defined]
        try:
            for header in (
                {"t": "store"},
                {"t": "meta", "o": "p0"},
                {"t": "req", "o": "p0", "block": True},
                {"t": "echo"},
            ):
                reply = call(raw, header)
                assert (reply["t"], reply["kind"]) == ("error", "PermissionDenied"), header
                assert "not approved" in reply["message"]
            raw.channel.send({"t": "ops", "ops": [{"k": "put", "o": "s1", "v": codec.encode(5, [])}]})
            assert ask(owner, "len(d.requests.history)") == 0
            assert call(raw, {"t": "hello"})["t"] == "welcome"
            assert [i["name"] for i in call(raw, {"t": "store"})["items"]] == ["one"]
            assert call(raw, {"t": "meta", "o": "s1"})["kind"] == "PermissionDenied"  # the early op never ran
            assert ask(owner, "d.requests.history[-1].decided_by").startswith("handler:")
        finally:
            raw.close()
    finally:
        owner.close()


# ---- 8. delete_obj ---------------------------------------------------------------------------------------------


def test_delete_obj_frees_computed_objects_only(session: tuple[Peer, duet.Duet]) -> None:
    owner, d = session
    owner.run('d.requests.add_handler(name="del", action="accept")')
    x = d.store["ages"]
    kept, freed = x * 1, x.float() + 1
    assert freed.shape == torch.Size([3, 4])  # a round trip: both ops have run
    assert ask(owner, f"[d.store.holds({kept._duet_id!r}), d.store.holds({freed._duet_id!r})]") == [
        True,
        True,
    ]
    assert freed.get(name="del", delete_obj=True)[0, 0] == 1.0
    assert kept.get(name="del")[2, 3] == 11.0
    assert ask(owner, f"[d.store.holds({kept._duet_id!r}), d.store.holds({freed._duet_id!r})]") == [
        True,
        False,
    ]
    with pytest.raises(duet.PermissionDenied, match="no object"):
        freed.get(name="del")
    assert x.get(name="del", delete_obj=True).shape == (3, 4)  # published: stays
    assert ask(owner, f"d.store.holds({x._duet_id!r})") and x.get(name="del").shape == (3, 4)


# ---- 9. a large value ------------------------------------------------------------------------------------------


TEE_STDERR = """
import sys
class Tee:
    def __init__(self, inner):
        self.inner, self.parts = inner, []
    def write(self, text):
        self.parts.append(text)
        return self.inner.write(text)
    def flush(self):
        self.inner.flush()
    def __getattr__(self, name):
        return getattr(self.inner, name)
real_stderr = sys.stderr
sys.stderr = tee = Tee(real_stderr)
"""


def test_large_value_is_delivered_intact(
    session: tuple[Peer, duet.Duet], capsys: pytest.CaptureFixture[str]
) -> None:
    owner, d = session
    owner.run(
        "import hashlib\nbig = torch.randn(5 << 20, generator=torch.Generator().manual_seed(1))\n"
        'd.store.publish(big, name="big", description="20 MB")\nd.requests.add_handler(name="big", action="accept")'
    )
    owner.run(TEE_STDERR)  # what the owner's process writes to its stderr (its bars), kept to be read back
    try:
        from duet import progress

        assert progress.THRESHOLD < 20 << 20 and ask(owner, "duet.progress.THRESHOLD") < 20 << 20
        owner.run('d.requests.add_handler(name="small", action="accept")')
        assert d.store["answer"].get(name="small") == 42
        assert "receiving" not in capsys.readouterr().err  # a small value shows no bar
        assert "sending" not in ask(owner, "''.join(tee.parts)")
        digest = ask(owner, "hashlib.sha256(big.numpy().tobytes()).hexdigest()")
        start = time.monotonic()
        value = d.store["big"].get(name="big", timeout_secs=60)
        seconds = time.monotonic() - start
        assert value.shape == (5 << 20,) and value.dtype == torch.float32
        assert hashlib.sha256(value.numpy().tobytes()).hexdigest() == digest
        # a bar on each side: the owner's as it sends, the scientist's (this process) as it receives
        received = capsys.readouterr().err
        assert "receiving big" in received and "/20.0M" in received, received[-500:]
        sent = ask(owner, "''.join(tee.parts)")
        assert "sending big" in sent and "/20.0M" in sent, sent[-500:]
        with capsys.disabled():
            print(f"20 MB value delivered in {seconds:.2f} s")
    finally:
        owner.run('sys.stderr = real_stderr\nd.store.remove("big")\ndel big')


# ---- 10. the widget, headless ---------------------------------------------------------------------------------


def test_widget_buttons_decide_requests(session: tuple[Peer, duet.Duet]) -> None:
    owner, d = session
    total = d.store["ages"].sum()
    owner.run("w = d.requests.widget()")
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(total.get, request_block=True, name="via-widget", reason="for the panel")
            owner_waits(owner, "len(w.rows) == 1")
            label = ask(owner, "list(w.rows.values())[0].label.value")
            assert "via-widget" in label and "for the panel" in label and "alice" in label
            assert "1 pending" in ask(owner, "w.header.value")
            owner.run("list(w.rows.values())[0].accept_button.click()")
            assert fut.result(10) == pytest.approx(66.0)
            assert ask(owner, "(len(w.rows), 'accepted' in w.message.value)") == [0, True]

            fut = pool.submit(total.get, request_block=True, name="via-widget-2", strict=True)
            owner_waits(owner, "len(w.rows) == 1")
            owner.run("row = list(w.rows.values())[0]\nrow.reason.value = 'not now'\nrow.deny_button.click()")
            with pytest.raises(duet.RequestDenied, match="not now"):
                fut.result(10)
            assert "0 pending" in ask(owner, "w.header.value")
    finally:
        owner.run("w.close()")


# ---- the round trip of a small accepted get ----------------------------------------------------------------


def test_small_get_round_trip(session: tuple[Peer, duet.Duet]) -> None:
    owner, d = session
    owner.run('d.requests.add_handler(name="rtt", action="accept")')
    answer = d.store["answer"]
    assert answer.get(name="rtt") == 42
    times = []
    for _ in range(200):
        start = time.perf_counter()
        assert answer.get(name="rtt") == 42
        times.append(time.perf_counter() - start)
    times.sort()
    median, p99 = statistics.median(times), times[197]
    print(
        f"small get accepted by a handler, 200 tries: median {median * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
    )
    assert median < 0.1
