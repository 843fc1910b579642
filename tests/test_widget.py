"""The owner's request panel, headless: rows appear and go, buttons decide, several panels, close."""

from __future__ import annotations

import collections
import logging
import threading

import ipywidgets as widgets
import pytest

from duet.requests import Request, RequestQueue
from duet.requests.widget import RequestPanel, format_age


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(clock: FakeClock) -> RequestQueue:
    return RequestQueue(on_decided=lambda r: None, clock=clock)


def req(name: str, **kw: object) -> Request:
    kw.setdefault("object_id", f"id-{name}")
    kw.setdefault("object_type", "Tensor")
    kw.setdefault("shape", (2, 3))
    kw.setdefault("requester", "alice (3f9a-12bc)")
    return Request(name=name, **kw)  # type: ignore[arg-type]


def walk(w: widgets.Widget) -> list[widgets.Widget]:
    out = [w]
    for child in getattr(w, "children", ()):
        out.extend(walk(child))
    return out


def buttons(panel: RequestPanel, label: str) -> list[widgets.Button]:
    return [w for w in walk(panel) if isinstance(w, widgets.Button) and w.description == label]


def texts(panel: RequestPanel) -> str:
    return " ".join(w.value for w in walk(panel) if isinstance(w, widgets.HTML))


def test_panel_lists_pending_requests(queue: RequestQueue, clock: FakeClock) -> None:
    panel = queue.widget()
    assert isinstance(panel, widgets.VBox)
    assert buttons(panel, "Accept") == [] and "No pending requests" in texts(panel)
    queue.submit(req("mean", reason="average age", timeout_secs=20))
    clock.t += 5
    queue.submit(req("loss"))
    assert len(buttons(panel, "Accept")) == 2 and len(buttons(panel, "Deny")) == 2
    text = texts(panel)
    for part in (
        "mean",
        "average age",
        "loss",
        "Tensor",
        "(2, 3)",
        "alice (3f9a-12bc)",
        "5s ago",
        "expires in 15s",
    ):
        assert part in text
    assert "2 pending" in text


def test_accept_button_decides_and_updates(queue: RequestQueue) -> None:
    panel = queue.widget()
    r = queue.submit(req("mean"))
    other = queue.submit(req("sum"))
    before = list(panel.children)
    buttons(panel, "Accept")[0].click()
    assert r.status == "accepted" and r.decided_by == "owner" and other.status == "pending"
    assert panel.children != tuple(before)
    assert len(buttons(panel, "Accept")) == 1 and r.id not in panel.rows
    assert "1 pending" in texts(panel) and "1 accepted" in texts(panel)


def test_deny_button_sends_the_typed_reason(queue: RequestQueue) -> None:
    panel = queue.widget()
    r = queue.submit(req("mean"))
    panel.rows[r.id].reason.value = "too revealing"
    buttons(panel, "Deny")[0].click()
    assert r.status == "denied" and r.deny_reason == "too revealing"
    assert "1 denied" in texts(panel) and "No pending requests" in texts(panel)


def test_typed_reason_survives_new_arrivals(queue: RequestQueue) -> None:
    panel = queue.widget()
    r = queue.submit(req("mean"))
    panel.rows[r.id].reason.value = "half typed"
    queue.submit(req("other"))
    assert panel.rows[r.id].reason.value == "half typed"


def test_stale_button_shows_a_message(queue: RequestQueue) -> None:
    panel = queue.widget()
    r = queue.submit(req("mean"))
    stale = buttons(panel, "Accept")[0]
    queue.deny(r)  # decided elsewhere (another panel, a handler, the notebook)
    stale.click()
    assert r.status == "denied"
    assert "already denied" in panel.message.value


def test_scientist_text_is_escaped(queue: RequestQueue) -> None:
    panel = queue.widget()
    queue.submit(req("<img src=x onerror=alert(1)>", reason="<script>x</script>"))
    text = texts(panel)
    assert "<script>" not in text and "<img" not in text
    assert "&lt;script&gt;" in text


def test_several_panels_and_close(queue: RequestQueue) -> None:
    p1, p2 = queue.widget(), queue.widget()
    r = queue.submit(req("mean"))
    assert len(buttons(p1, "Accept")) == len(buttons(p2, "Accept")) == 1
    buttons(p1, "Accept")[0].click()
    assert r.status == "accepted" and buttons(p2, "Accept") == []
    p2.close()
    p2.close()
    assert len(queue._listeners) == 1
    queue.submit(req("sum"))
    assert len(buttons(p1, "Accept")) == 1
    assert p2.rows == {}


def test_updates_from_another_thread(queue: RequestQueue) -> None:
    panel = queue.widget()
    done = threading.Event()

    def loop_thread() -> None:
        queue.submit(req("from-loop"))
        done.set()

    threading.Thread(target=loop_thread).start()
    assert done.wait(timeout=10)
    assert "from-loop" in texts(panel)


def test_clicking_while_another_thread_submits(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    """One thread submits 300 requests while this one keeps clicking Accept on the rows it sees."""
    decided: collections.Counter[str] = collections.Counter()
    queue = RequestQueue(on_decided=lambda r: decided.update([r.id]), clock=clock)
    panel = queue.widget()
    submitted: list[Request] = []
    errors: list[BaseException] = []
    started = threading.Event()
    clicking = threading.Event()

    def submitter() -> None:
        try:
            for i in range(300):
                submitted.append(queue.submit(req(f"r{i}")))
                started.set()
                if i == 10:  # (so that some clicks surely race the submissions: the GIL may not switch)
                    clicking.wait(10)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            started.set()

    caplog.set_level(logging.ERROR)
    thread = threading.Thread(target=submitter)
    thread.start()
    assert started.wait(10)
    clicks = clicked_while_submitting = 0
    while thread.is_alive():
        for button in buttons(panel, "Accept")[:3]:
            button.click()
            clicks += 1
            clicked_while_submitting += thread.is_alive()
            clicking.set()
    thread.join(30)
    assert errors == [] and len(submitted) == 300
    assert clicked_while_submitting > 0  # the clicks really raced the submissions
    pending = list(queue)
    # the rows are the oldest pending requests, each showing its own request
    assert list(panel.rows) == [r.id for r in pending[: panel.max_rows]]
    for rid, row in panel.rows.items():
        assert row.req.id == rid and f"<b>{row.req.name}</b>" in row.label.value
    assert f"{len(pending)} pending" in panel.header.value
    while buttons(panel, "Accept"):
        buttons(panel, "Accept")[0].click()
        clicks += 1
    assert len(queue) == 0 and panel.rows == {} and "No pending requests" in texts(panel)
    assert all(r.status == "accepted" and r.decided_by == "owner" for r in submitted)
    assert sorted(decided) == sorted(r.id for r in submitted) and set(decided.values()) == {1}
    assert len(queue.history) == 300 and "300 accepted" in panel.header.value
    assert clicks >= 300
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_closing_the_queue_shows_in_the_panel(queue: RequestQueue) -> None:
    panel = queue.widget()
    queue.submit(req("mean"))
    queue.close()
    assert "No pending requests" in texts(panel) and "1 expired" in texts(panel)


def test_refresh_button_and_age_format(queue: RequestQueue, clock: FakeClock) -> None:
    panel = queue.widget()
    queue.submit(req("mean"))
    clock.t += 125
    buttons(panel, "Refresh")[0].click()
    assert "2m 05s ago" in texts(panel)
    assert [format_age(s) for s in (-1, 42, 185, 7620)] == ["0s", "42s", "3m 05s", "2h 07m"]


# ---- the panel's API for code: wait_for, accept, deny --------------------------------------------------


def test_panel_accept_by_name_does_what_the_button_does(queue: RequestQueue) -> None:
    panel = queue.widget()
    r = queue.submit(req("mean"))
    other = queue.submit(req("sum"))
    assert panel.accept("mean") is True
    assert r.status == "accepted" and r.decided_by == "owner" and other.status == "pending"
    assert r.id not in panel.rows and len(buttons(panel, "Accept")) == 1
    assert "mean accepted" in panel.message.value and "1 accepted" in texts(panel)
    assert panel.accept(r) is False  # decided already: reported on the message line, as a stale click is
    assert "already accepted" in panel.message.value
    with pytest.raises(KeyError):
        panel.accept("mean")  # no pending request of that name any more


def test_panel_deny_by_request_or_id_with_a_reason(queue: RequestQueue) -> None:
    panel = queue.widget()
    typed, given = queue.submit(req("a")), queue.submit(req("b"))
    panel.rows[typed.id].reason.value = "typed in the box"
    assert panel.deny(typed.id) is True  # no reason given: the one typed in the row, as the button
    assert typed.status == "denied" and typed.deny_reason == "typed in the box"
    assert panel.deny(given, reason="too revealing") is True
    assert given.status == "denied" and given.deny_reason == "too revealing"
    assert "No pending requests" in texts(panel) and "2 denied" in texts(panel)


def test_panel_accept_picks_the_oldest_of_a_name(queue: RequestQueue, clock: FakeClock) -> None:
    panel = queue.widget()
    first = queue.submit(req("loss", object_id="id-epoch-1"))
    clock.t += 1
    second = queue.submit(req("loss", object_id="id-epoch-2"))
    panel.accept("loss")
    assert first.status == "accepted" and second.status == "pending"


def test_panel_wait_for_returns_a_request_submitted_from_another_thread(queue: RequestQueue) -> None:
    import time

    panel = queue.widget()

    def later() -> None:
        time.sleep(0.3)
        queue.submit(req("noise"))
        queue.submit(req("mean_stay"))

    thread = threading.Thread(target=later)
    thread.start()
    t = time.monotonic()
    got = panel.wait_for("mean_stay", timeout=10)
    thread.join()
    assert got.name == "mean_stay" and got.status == "pending" and 0.2 < time.monotonic() - t < 5
    assert panel.wait_for(got.id, timeout=0) is got  # by id, already there: at once
    panel.accept(got)
    assert got.status == "accepted"
    t = time.monotonic()
    with pytest.raises(TimeoutError):
        panel.wait_for("never", timeout=0.3)
    assert time.monotonic() - t < 3
