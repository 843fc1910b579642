"""Handler matching: order, criteria, expiry, element quotas, print_local, join handlers."""

from __future__ import annotations

import pytest

from duet.requests import Request, RequestQueue
from duet.requests.handlers import HANDLER_COLUMNS


class FakeClock:
    def __init__(self, t: float = 1_000_000.0) -> None:
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
    return RequestQueue(
        on_decided=decided.append, value_of=lambda r: f"<value of {r.object_id}>", clock=clock
    )


_counter = iter(range(10**9))


def req(**kw: object) -> Request:
    kw.setdefault("object_id", f"obj{next(_counter)}")
    kw.setdefault("requester", "alice (3f9a-12bc)")
    return Request(**kw)  # type: ignore[arg-type]


def test_first_matching_handler_decides_in_order(queue: RequestQueue) -> None:
    k1 = queue.add_handler(name="loss", action="deny")
    k2 = queue.add_handler(name="loss", action="accept")
    r = queue.submit(req(name="loss"))
    assert r.status == "denied" and r.decided_by == f"handler:{k1}"
    queue.remove_handler(k1)
    r2 = queue.submit(req(name="loss"))
    assert r2.status == "accepted" and r2.decided_by == f"handler:{k2}"
    assert len(queue) == 0


def test_name_criterion(queue: RequestQueue) -> None:
    queue.add_handler(name="cuda_is_available", action="accept")
    other = queue.submit(req(name="mean"))
    hit = queue.submit(req(name="cuda_is_available"))
    assert other.status == "pending" and hit.status == "accepted"
    assert list(queue) == [other]


def test_tags_criterion_uses_the_owners_inherited_tags(queue: RequestQueue) -> None:
    queue.add_handler(tags=["#ages"], action="accept")
    # x.float().mean() inherits #ages and #2021 from x: every handler tag must be among the request's tags
    inherited = queue.submit(req(name="mean", tags=("#ages", "#2021")))
    untagged = queue.submit(req(name="mean", tags=("#other",)))
    assert inherited.status == "accepted"
    assert untagged.status == "pending"


def test_tags_criterion_needs_every_handler_tag(queue: RequestQueue) -> None:
    queue.add_handler(tags="#ages", action="accept")  # a single string is one tag
    queue.add_handler(tags=["#ages", "#2021"], action="deny")
    assert queue.handlers[0].tags == ("#ages",)
    r = queue.submit(req(tags=("#2021",)))
    assert r.status == "pending"


def test_name_and_tags_both_required(queue: RequestQueue) -> None:
    queue.add_handler(name="mean", tags=["#ages"], action="accept")
    only_name = queue.submit(req(name="mean", tags=("#x",)))
    only_tags = queue.submit(req(name="sum", tags=("#ages",)))
    both = queue.submit(req(name="mean", tags=("#ages",)))
    assert [only_name.status, only_tags.status, both.status] == ["pending", "pending", "accepted"]


def test_deny_handler(queue: RequestQueue, decided: list[Request]) -> None:
    queue.add_handler(name="loss", action="deny", timeout_secs=-1)
    r = queue.submit(req(name="loss"))
    assert r.status == "denied" and decided == [r]
    assert queue.history[0] is r


def test_handler_expires_after_timeout(queue: RequestQueue, clock: FakeClock) -> None:
    key = queue.add_handler(name="mean", action="accept", timeout_secs=10)
    clock.advance(9.5)
    assert queue.submit(req(name="mean")).status == "accepted"
    row = queue.handlers.pandas.iloc[0]
    assert row["status"] == "active" and row["remaining_secs"] == pytest.approx(0.5)
    clock.advance(0.5)
    assert queue.submit(req(name="mean")).status == "pending"
    row = queue.handlers.pandas.iloc[0]
    assert row["key"] == key and row["status"] == "expired" and row["remaining_secs"] == 0


def test_timeout_minus_one_never_expires(queue: RequestQueue, clock: FakeClock) -> None:
    queue.add_handler(name="mean", action="accept", timeout_secs=-1)
    clock.advance(10**9)
    assert queue.submit(req(name="mean")).status == "accepted"
    row = queue.handlers.pandas.iloc[0]
    assert row["status"] == "active" and row["remaining_secs"] is None


def test_element_quota_counts_exhausts_and_falls_through(queue: RequestQueue) -> None:
    quota = queue.add_handler(tags=["#ages"], action="accept", element_quota=1000)
    fallback = queue.add_handler(tags=["#ages"], action="deny")
    a = queue.submit(req(tags=("#ages",), elements=600))
    assert a.decided_by == f"handler:{quota}" and a.status == "accepted"
    # 400 left: a 500-element release does not match the quota handler, the next handler decides
    b = queue.submit(req(tags=("#ages",), elements=500))
    assert b.decided_by == f"handler:{fallback}" and b.status == "denied"
    c = queue.submit(req(tags=("#ages",), elements=400))
    assert c.decided_by == f"handler:{quota}"
    h = queue.handlers[quota]
    assert h.elements_released == 1000 and h.remaining_quota == 0
    assert queue.handlers.pandas.set_index("key").loc[quota, "status"] == "exhausted"
    d = queue.submit(req(tags=("#ages",), elements=1))
    assert d.decided_by == f"handler:{fallback}"


def test_quota_exhausted_request_waits_for_owner(queue: RequestQueue) -> None:
    key = queue.add_handler(tags=["#ages"], action="accept", element_quota=10)
    big = queue.submit(req(tags=("#ages",), elements=11))
    assert big.status == "pending"
    big.accept()  # the owner's own accept does not use the handler's quota
    assert queue.handlers[key].elements_released == 0
    assert queue.submit(req(tags=("#ages",), elements=10)).status == "accepted"
    assert queue.handlers[key].elements_released == 10


def test_print_local_on_accept_and_deny(queue: RequestQueue, capsys: pytest.CaptureFixture[str]) -> None:
    queue.add_handler(name="loss", action="deny", print_local=True)
    queue.add_handler(name="acc", action="accept", print_local=True)
    queue.add_handler(name="quiet", action="accept")
    queue.submit(req(name="loss", object_id="L1"))
    out = capsys.readouterr().out
    assert "'loss'" in out and "denied" in out and "<value of L1>" in out
    queue.submit(req(name="acc", object_id="A1"))
    out = capsys.readouterr().out
    assert "'acc'" in out and "accepted" in out and "<value of A1>" in out
    queue.submit(req(name="quiet", object_id="Q1"))
    assert capsys.readouterr().out == ""


def test_print_local_happens_before_on_decided(clock: FakeClock, capsys: pytest.CaptureFixture[str]) -> None:
    order: list[str] = []

    def value_of(r: Request) -> object:
        order.append("value")
        return 42

    q = RequestQueue(on_decided=lambda r: order.append("decided"), value_of=value_of, clock=clock)
    q.add_handler(name="x", print_local=True)
    q.submit(req(name="x"))
    assert order == ["value", "decided"]
    assert ": 42" in capsys.readouterr().out


def test_print_local_survives_a_failing_value_of(
    clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(r: Request) -> object:
        raise KeyError("gone")

    q = RequestQueue(on_decided=lambda r: None, value_of=boom, clock=clock)
    q.add_handler(name="x", print_local=True)
    assert q.submit(req(name="x")).status == "accepted"
    assert "value not available: KeyError" in capsys.readouterr().out


def test_join_handler_admits_only_join_requests(queue: RequestQueue) -> None:
    queue.add_handler(action="accept")  # catch-all for values: never lets a peer in
    join = queue.submit(Request(kind="join", name="anything", requester="bob (aaaa-bbbb)", elements=0))
    assert join.name == "join" and join.status == "pending"
    queue.add_handler(name="join", action="accept")
    assert join.status == "accepted" and join.decided_by == f"handler:{queue.handlers[1].key}"
    queue.clear_handlers()
    queue.add_handler(name="join", action="accept")
    sneaky = queue.submit(req(name="join"))  # a value request named "join" is not admitted by it
    assert sneaky.status == "pending"


def test_join_deny_handler(queue: RequestQueue) -> None:
    queue.add_handler(name="join", action="deny")
    assert queue.submit(Request(kind="join", requester="mallory")).status == "denied"


def test_new_handler_applies_to_pending_requests(queue: RequestQueue, decided: list[Request]) -> None:
    a = queue.submit(req(name="mean"))
    b = queue.submit(req(name="sum"))
    queue.add_handler(name="mean", action="accept")
    assert a.status == "accepted" and b.status == "pending"
    assert decided == [a]


def test_remove_and_clear_handlers(queue: RequestQueue) -> None:
    k = queue.add_handler(name="a")
    queue.add_handler(name="b")
    with pytest.raises(KeyError):
        queue.remove_handler("nope")
    queue.remove_handler(k)
    assert [h.name for h in queue.handlers] == ["b"]
    queue.clear_handlers()
    assert len(queue.handlers) == 0 and not queue.handlers
    assert list(queue.handlers.pandas.columns) == HANDLER_COLUMNS


def test_handlers_pandas_in_match_order(queue: RequestQueue) -> None:
    keys = [
        queue.add_handler(name="loss", action="deny", timeout_secs=-1, print_local=True),
        queue.add_handler(name="cuda_is_available", action="accept"),
        queue.add_handler(tags=["#ages"], action="accept", element_quota=1000),
    ]
    df = queue.handlers.pandas
    assert list(df.columns) == HANDLER_COLUMNS
    assert list(df["key"]) == keys and list(df["order"]) == [0, 1, 2]
    assert list(df["action"]) == ["deny", "accept", "accept"]
    assert df.iloc[2]["element_quota"] == 1000 and df.iloc[2]["remaining_quota"] == 1000
    assert df.iloc[0]["print_local"]
    assert "loss" in repr(queue.handlers)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"action": "maybe"},
        {"timeout_secs": -2},
        {"timeout_secs": float("nan")},
        {"element_quota": -1},
        {"element_quota": 1.5},
        {"element_quota": 10, "action": "deny"},
    ],
)
def test_add_handler_rejects_bad_arguments(queue: RequestQueue, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        queue.add_handler(**kwargs)
    assert len(queue.handlers) == 0


def test_add_handler_rejects_bad_types(queue: RequestQueue) -> None:
    with pytest.raises(TypeError):
        queue.add_handler(tags=[1])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        queue.add_handler(timeout_secs="5")  # type: ignore[arg-type]
