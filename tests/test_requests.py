"""The request queue: list access, decisions, expiry, dedup, history, sqlite record, thread safety."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import textwrap
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

import duet.requests
from duet.errors import DuetError, QuotaExceeded
from duet.requests import AlreadyDecided, RecordDB, Request, RequestQueue
from duet.requests.history import HISTORY_COLUMNS

API_COLUMNS = [
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


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, secs: float) -> None:
        self.t += secs


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def decided() -> list[Request]:
    return []


@pytest.fixture
def queue(clock: FakeClock, decided: list[Request]) -> RequestQueue:
    return RequestQueue(on_decided=decided.append, clock=clock)


def req(name: str = "mean", **kw: object) -> Request:
    kw.setdefault("object_id", "obj1")
    kw.setdefault("object_type", "Tensor")
    kw.setdefault("shape", (3,))
    kw.setdefault("requester", "alice (3f9a-12bc)")
    kw.setdefault("timeout_secs", 20)
    return Request(name=name, **kw)  # type: ignore[arg-type]


def test_public_names() -> None:
    assert set(duet.requests.__all__) == {
        "AlreadyDecided",
        "Handler",
        "HandlerList",
        "History",
        "RecordDB",
        "Request",
        "RequestQueue",
        "new_request_id",
    }
    assert issubclass(AlreadyDecided, DuetError)


def test_request_defaults_and_asdict() -> None:
    r = Request(name="x")
    assert len(r.id) == 12 and int(r.id, 16) >= 0
    assert r.created_at.tzinfo is not None and r.status == "pending"
    assert "_queue" not in dataclasses.asdict(r)
    with pytest.raises(DuetError):
        r.accept()  # not in a queue


def test_pending_is_list_like(queue: RequestQueue) -> None:
    assert not queue and len(queue) == 0
    a = queue.submit(req("a", object_id="o1"))
    b = queue.submit(req("b", object_id="o2"))
    assert queue and len(queue) == 2
    assert queue[0] is a and queue[-1] is b and queue[b.id] is b
    assert list(queue) == [a, b]
    with pytest.raises(KeyError):
        queue["nope"]
    assert "'a'" in repr(queue)


def test_pandas_columns_exactly_as_api(queue: RequestQueue, clock: FakeClock) -> None:
    empty = queue.pandas
    assert list(empty.columns) == API_COLUMNS and len(empty) == 0
    r = queue.submit(req("mean", reason="average age", shape=(2, 3)))
    df = queue.pandas
    assert list(df.columns) == API_COLUMNS
    row = df.iloc[0]
    assert row["id"] == r.id and row["name"] == "mean" and row["reason"] == "average age"
    assert row["shape"] == (2, 3) and row["status"] == "pending" and row["object_type"] == "Tensor"
    assert row["created_at"] == datetime.fromtimestamp(clock.t, timezone.utc)
    assert str(df["created_at"].dtype).startswith("datetime64") and "UTC" in str(df["created_at"].dtype)


def test_accept_by_hand_via_index(queue: RequestQueue, decided: list[Request], clock: FakeClock) -> None:
    r = queue.submit(req())
    clock.advance(3)
    queue[0].accept()
    assert r.status == "accepted" and r.decided_by == "owner"
    assert r.decided_at == datetime.fromtimestamp(clock.t, timezone.utc)
    assert decided == [r] and len(queue) == 0


def test_deny_by_id_with_reason(queue: RequestQueue, decided: list[Request]) -> None:
    r = queue.submit(req())
    queue.deny(r.id, reason="too revealing")
    assert r.status == "denied" and r.deny_reason == "too revealing" and decided == [r]
    r2 = queue.submit(req("other"))
    queue[0].deny(reason="no")
    assert r2.deny_reason == "no"


def test_deciding_twice_is_refused(queue: RequestQueue, decided: list[Request]) -> None:
    r = queue.submit(req())
    r.accept()
    with pytest.raises(AlreadyDecided, match="already accepted by owner"):
        r.deny()
    with pytest.raises(AlreadyDecided):
        queue.accept(r.id)
    assert r.status == "accepted" and decided == [r]
    with pytest.raises(KeyError):
        queue.accept("unknown")


def test_accept_after_deadline_expires_instead(
    queue: RequestQueue, decided: list[Request], clock: FakeClock
) -> None:
    r = queue.submit(req(timeout_secs=5))
    clock.advance(5)
    with pytest.raises(AlreadyDecided, match="expired"):
        r.accept()
    assert r.status == "expired" and r.decided_by == "timeout" and decided == [r]
    assert queue.expire_due() == []


def test_pending_request_expires(queue: RequestQueue, decided: list[Request], clock: FakeClock) -> None:
    short = queue.submit(req("short", timeout_secs=10))
    forever = queue.submit(req("forever", timeout_secs=-1))
    clock.advance(9.9)
    assert queue.expire_due() == []
    clock.advance(0.1)
    assert queue.expire_due() == [short]
    assert short.status == "expired" and short.decided_by == "timeout" and decided == [short]
    clock.advance(10**8)
    assert queue.expire_due() == []
    assert decided == [short] and list(queue) == [forever]


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -5])
def test_odd_timeouts_mean_never(queue: RequestQueue, clock: FakeClock, timeout: float) -> None:
    r = queue.submit(req(timeout_secs=timeout))
    assert r.timeout_secs == -1
    clock.advance(10**9)
    assert queue.expire_due() == []


def test_identical_pending_request_is_not_duplicated(queue: RequestQueue, decided: list[Request]) -> None:
    first = queue.submit(req("mean", reason="r"))
    again = queue.submit(req("mean", reason="r"))
    assert again is first and len(queue) == 1
    for different in (
        req("mean", reason="other"),
        req("sum", reason="r"),
        req("mean", reason="r", object_id="obj2"),
        req("mean", reason="r", requester="bob (0000-1111)"),
    ):
        assert queue.submit(different) is different
    assert len(queue) == 5
    first.accept()
    assert queue.submit(req("mean", reason="r")) is not first  # only pending ones are merged
    assert decided == [first]


def test_submit_sanitizes_and_validates(queue: RequestQueue) -> None:
    r = queue.submit(req("n" * 10_000, reason="r" * 10_000, tags=["#a"]))
    assert len(r.name) == 200 and len(r.reason) == 2000 and r.tags == ("#a",)
    with pytest.raises(ValueError):
        queue.submit(Request(kind="exec"))
    with pytest.raises(ValueError):
        queue.submit(r)  # already submitted
    dup_id = req("x", id=r.id)
    with pytest.raises(ValueError):
        queue.submit(dup_id)


def test_max_pending(clock: FakeClock) -> None:
    q = RequestQueue(on_decided=lambda r: None, clock=clock, max_pending=2)
    q.submit(req("a"))
    q.submit(req("b"))
    with pytest.raises(QuotaExceeded):
        q.submit(req("c"))


def test_failing_callbacks_are_logged_not_raised(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    def boom(r: Request) -> None:
        raise RuntimeError("send failed")

    q = RequestQueue(on_decided=boom, clock=clock)
    q.add_listener(lambda event, r: boom(r))
    with caplog.at_level(logging.ERROR, logger="duet.requests"):
        r = q.submit(req())
        r.accept()
    assert r.status == "accepted"
    assert "on_decided failed" in caplog.text and "listener failed" in caplog.text


def test_listeners_see_submissions_and_decisions(queue: RequestQueue) -> None:
    events: list[tuple[str, str]] = []

    def listener(e: str, r: Request) -> None:
        events.append((e, r.name))

    queue.add_listener(listener)
    queue.submit(req("a")).deny()
    queue.remove_listener(listener)
    queue.submit(req("b"))
    assert events == [("submitted", "a"), ("decided", "a")]


def test_history_columns_and_access(queue: RequestQueue, clock: FakeClock) -> None:
    assert list(queue.history.pandas.columns) == HISTORY_COLUMNS
    a = queue.submit(req("a", timeout_secs=1))
    b = queue.submit(req("b"))
    c = queue.submit(req("c"))
    queue.add_handler(name="c", action="deny")
    b.deny("no")
    clock.advance(2)
    queue.expire_due()
    hist = queue.history
    assert list(hist) == [c, b, a] and len(hist) == 3 and hist[a.id] is a
    df = hist.pandas
    assert list(df.columns) == API_COLUMNS + [
        "decision",
        "decided_by",
        "decided_at",
        "deny_reason",
        "session",
    ]
    assert list(df["decision"]) == ["denied", "denied", "expired"]
    assert df.iloc[0]["decided_by"].startswith("handler:") and df.iloc[1]["deny_reason"] == "no"
    assert df.iloc[2]["decided_by"] == "timeout"
    assert hist.counts() == {"accepted": 0, "denied": 2, "expired": 1}
    assert "3 decided" in repr(hist)


def test_close_expires_pending_and_refuses_new(queue: RequestQueue, decided: list[Request]) -> None:
    r = queue.submit(req())
    queue.close()
    queue.close()
    assert r.status == "expired" and r.decided_by == "close" and decided == [r]
    with pytest.raises(DuetError):
        queue.submit(req("later"))


def test_thread_safety_smoke(clock: FakeClock) -> None:
    n = 300
    lock = threading.Lock()
    seen: list[str] = []
    all_done = threading.Event()

    def on_decided(r: Request) -> None:
        with lock:
            seen.append(r.id)
            if len(seen) == n:
                all_done.set()

    q = RequestQueue(on_decided=on_decided, clock=clock)
    submitted = threading.Event()

    def producer() -> None:
        for i in range(n):
            q.submit(req(f"r{i}", object_id=f"o{i}"))
        submitted.set()

    def owner() -> None:
        while not all_done.is_set():
            for r in list(q):
                try:
                    r.accept()
                except AlreadyDecided:
                    pass
            if submitted.is_set() and not q:
                return

    threads = [
        threading.Thread(target=producer),
        threading.Thread(target=owner),
        threading.Thread(target=owner),
    ]
    for t in threads:
        t.start()
    assert all_done.wait(timeout=30)
    for t in threads:
        t.join(timeout=30)
    assert len(seen) == n == len(set(seen))  # each decided exactly once
    assert len(q.history) == n and not q


# -- sqlite record ----------------------------------------------------------------------------------------


def test_history_persists_across_reopen(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "record.sqlite"
    q1 = RequestQueue(on_decided=lambda r: None, clock=clock, db_path=path)
    a = q1.submit(req("a"))
    a.accept()
    q1.submit(req("b")).deny("no")
    session1 = q1.history.session
    q1.close()

    q2 = RequestQueue(on_decided=lambda r: None, clock=clock, db_path=str(path))
    df = q2.history.pandas
    assert list(df["name"]) == ["a", "b"] and list(df["decision"]) == ["accepted", "denied"]
    assert set(df["session"]) == {session1} and q2.history.session != session1
    old = q2.history[a.id]
    assert old.status == "accepted" and old.shape == (3,) and old.decided_at == a.decided_at
    with pytest.raises(DuetError):
        old.accept()  # an earlier session's request cannot be decided again
    q2.submit(req("c")).accept()
    assert list(q2.history.pandas["name"]) == ["a", "b", "c"]
    assert q2.history.counts() == {"accepted": 1, "denied": 0, "expired": 0}
    assert q2.history.counts(all_sessions=True)["accepted"] == 2
    q2.close()
    check = RecordDB(path)
    assert [s["ended_at"] is not None for s in check.sessions()[:2]] == [True, True]
    check.close()


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from duet.requests import Request, RequestQueue
    q = RequestQueue(on_decided=lambda r: None, db_path=sys.argv[1])
    q.submit(Request(name="released", object_id="o1", requester="alice")).accept()
    q.submit(Request(name="waiting", object_id="o2", requester="alice"))
    os._exit(3)  # a crash: no close(), no flush, no atexit
    """
)


def test_history_survives_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "crash.sqlite"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(path)], env=env, timeout=120)
    assert proc.returncode == 3
    q = RequestQueue(on_decided=lambda r: None, db_path=path)
    df = q.history.pandas
    assert list(df["name"]) == ["released", "waiting"]
    assert list(df["status"]) == ["accepted", "pending"]
    assert list(df["decision"]) == ["accepted", "session ended"]
    q.close()


def test_record_db_objects_and_events(tmp_path: Path) -> None:
    lock = threading.RLock()
    db = RecordDB(tmp_path / "r.sqlite", lock=lock)
    published = datetime(2026, 1, 2, tzinfo=timezone.utc)
    db.record_object(
        {
            "id": "abc123",
            "name": "ages",
            "tags": ["#ages", "#2021"],
            "description": "Ages of patients",
            "type": "Tensor",
            "shape": (100,),
            "dtype": "torch.int64",
            "size_bytes": 800,
            "published_at": published,
            "owner_note": "extra key",
        }
    )
    db.record_object({"id": "s1", "name": "n", "type": "int", "published_at": 1_800_000_000.0})
    db.record_object_removed("s1")
    db.record_event("peer_joined", {"who": "alice", "when": published})
    with pytest.raises(ValueError):
        db.record_object({"name": "no id"})
    db.close()
    db.close()
    with pytest.raises(ValueError):
        db.record_event("late")

    again = RecordDB(tmp_path / "r.sqlite")
    objs = {o["id"]: o for o in again.objects()}
    assert objs["abc123"]["tags"] == ("#ages", "#2021") and objs["abc123"]["shape"] == (100,)
    assert objs["abc123"]["published_at"] == published.isoformat() and objs["abc123"]["size_bytes"] == 800
    assert objs["abc123"]["extra"] == {"owner_note": "extra key"} and objs["abc123"]["removed_at"] is None
    assert objs["s1"]["shape"] is None and objs["s1"]["removed_at"] is not None
    (event,) = again.events()
    assert event["kind"] == "peer_joined" and event["detail"]["who"] == "alice"
    assert len(again.sessions()) == 2
    again.close()


def test_queue_exposes_its_db(tmp_path: Path, clock: FakeClock) -> None:
    q = RequestQueue(on_decided=lambda r: None, clock=clock)
    assert q.db is None
    q2 = RequestQueue(on_decided=lambda r: None, clock=clock, db_path=tmp_path / "q.sqlite")
    assert q2.db is not None and q2.db.session == q2.history.session
    q2.db.record_object({"id": "x1", "name": "x"})
    q2.close()
    assert q2.db.closed
