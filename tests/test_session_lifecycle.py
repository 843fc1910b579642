"""One process holding both sides: status transitions, repr on both sides, close, timeouts, the printed line,
the start-up allowlist report."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from aiohttp import web

import duet
from duet import connect, loop, startup
from duet.remote.allowlist import DEFAULT_ALLOWLIST


@pytest.fixture
def pair(signaling_url: str) -> Iterator[tuple[duet.Duet, duet.Duet]]:
    owner = duet.launch_duet(signaling_url=signaling_url, quiet=True, name="hospital")
    scientist = duet.join_duet(owner.session_id, signaling_url=signaling_url, name="alice", timeout=20)
    owner.wait_for_peer(timeout=20)
    yield owner, scientist
    scientist.close()
    owner.close()
    assert owner.status == scientist.status == "closed"


# ---- A. status: waiting -> connecting -> connected -> closed --------------------------------------------------


def test_both_sides_pass_through_connecting(signaling_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    owner = duet.launch_duet(signaling_url=signaling_url, quiet=True)
    seen_when_applied: list[str] = []
    apply = connect._apply

    async def recording_apply(pc: Any, sdp: str, kind: str) -> None:
        if kind == "answer":  # the owner applies the scientist's answer: ICE and DTLS have not run yet
            seen_when_applied.append(owner.status)
        await apply(pc, sdp, kind)

    monkeypatch.setattr(connect, "_apply", recording_apply)
    try:
        scientist = duet.join_duet(owner.session_id, signaling_url=signaling_url, timeout=20)
        owner.wait_for_peer(timeout=20)
        assert seen_when_applied == ["connecting"]
        assert owner._history == ["waiting", "connecting", "connected"]
        assert scientist._history == ["connecting", "connected"]
        scientist.close()
        assert scientist._history[-1] == "closed"
        assert owner.wait_closed(timeout=10)
        assert owner._history == ["waiting", "connecting", "connected", "closed"]
    finally:
        owner.close()


# ---- B. repr and the notebook display on both sides --------------------------------------------------------------


def fields_of_repr(d: duet.Duet) -> dict[str, str]:
    text = repr(d)
    assert text.startswith("<Duet ") and text.endswith(">")
    found = re.findall(
        r"(role|peer|status|objects|pending requests)=(.*?)(?= (?:peer|status|objects|pending requests)=|>$)",
        text,
    )
    return dict(found)


def fields_of_html(d: duet.Duet) -> dict[str, str]:
    return dict(re.findall(r"<th style='text-align:left'>(.*?)</th><td>(.*?)</td>", d._repr_html_()))


def test_repr_and_html_show_role_peer_status_objects_and_pending_on_both_sides(
    pair: tuple[duet.Duet, duet.Duet],
) -> None:
    owner, scientist = pair
    assert fields_of_repr(scientist)["objects"] == "0"  # listed once at join
    owner.store.publish(torch.arange(4.0), name="ages")
    owner.store.publish(3, name="three")
    assert len(scientist.store) == 2  # a listing: the scientist's count follows it
    handle = scientist.store["ages"].request(name="ages", reason="a test")
    scientist.ping()  # ordered after the request: once it returns, the owner has queued the request
    peer_of_owner = f"alice ({scientist.fingerprint})"
    peer_of_scientist = f"hospital ({owner.fingerprint})"
    expected = {
        owner: {"role": "owner", "peer": peer_of_owner, "status": "connected", "objects": "2", "pending requests": "1"},
        scientist: {
            "role": "scientist", "peer": peer_of_scientist, "status": "connected",
            "objects": "2", "pending requests": "1",
        },
    }  # fmt: skip
    for d, fields in expected.items():
        assert fields_of_repr(d) == fields, repr(d)
        assert fields_of_html(d) == fields, d._repr_html_()
    owner.requests[0].deny(reason="no")
    assert handle.wait(10) is None and handle.status == "denied"
    assert fields_of_repr(scientist)["pending requests"] == "0"
    assert fields_of_html(owner)["pending requests"] == "0"


# ---- G. closing a waiting owner ---------------------------------------------------------------------------------


def test_closing_a_waiting_owner_is_idempotent_and_cancels_its_pairing(signaling_url: str) -> None:
    owner = duet.launch_duet(signaling_url=signaling_url, quiet=True)
    assert owner.status == "waiting"
    owner.close()
    owner.close()  # idempotent
    with owner:
        pass  # and the context manager's close after it too
    assert owner.status == "closed" and owner._history == ["waiting", "closed"]
    with pytest.raises(duet.ConnectionError, match="closed"):
        owner.wait_for_peer(timeout=1)
    start = time.monotonic()
    with pytest.raises(duet.SignalingError, match="the owner cancelled this session"):
        duet.join_duet(owner.session_id, signaling_url=signaling_url, timeout=20)
    assert time.monotonic() - start < 3  # fails fast, well under the timeout


# ---- H. the session's timeout bounds the signaling calls ---------------------------------------------------------


@pytest.fixture
def hanging_url() -> Iterator[str]:
    """An HTTP server on port 0 that accepts every request and never answers it."""
    released: dict[str, asyncio.Event] = {}

    async def hang(request: web.Request) -> web.Response:
        await released["event"].wait()
        return web.Response(status=500)

    async def start() -> tuple[web.AppRunner, int]:
        released["event"] = asyncio.Event()
        application = web.Application()
        application.router.add_route("*", "/{tail:.*}", hang)
        runner = web.AppRunner(application, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, int(runner.addresses[0][1])

    async def stop(runner: web.AppRunner) -> None:
        released["event"].set()
        await runner.cleanup()

    runner, port = loop.run(start(), timeout=10)
    yield f"http://127.0.0.1:{port}"
    loop.run(stop(runner), timeout=10)


def test_join_with_a_short_timeout_against_a_server_that_never_answers(hanging_url: str) -> None:
    start = time.monotonic()
    with pytest.raises(duet.SignalingError) as info:
        duet.join_duet(duet_id(), signaling_url=hanging_url, timeout=1.5)
    elapsed = time.monotonic() - start
    assert 1.4 < elapsed < 4, elapsed
    assert f"the signaling server at {hanging_url} did not answer within 1.5 s" in str(info.value)


def test_launch_with_a_short_timeout_against_a_server_that_never_answers(hanging_url: str) -> None:
    start = time.monotonic()
    with pytest.raises(duet.SignalingError, match=re.escape(hanging_url)):
        duet.launch_duet(signaling_url=hanging_url, timeout=1.5, quiet=True)
    assert time.monotonic() - start < 5


def test_the_signaling_clients_timeout_is_the_sessions_capped_and_the_outer_bound_is_larger() -> None:
    assert startup.signaling_timeout(5) == 5.0
    assert startup.signaling_timeout(None) == startup.signaling_timeout(600) == startup.SIGNALING_TIMEOUT
    d = duet.Duet("scientist", duet_id(), name="s", signaling_url="http://127.0.0.1:9", timeout=2.5)
    assert d._client.timeout == 2.5


def duet_id() -> str:
    from duet.signaling.codes import new_session_id

    return new_session_id()


# ---- I. the printed line for the scientist -----------------------------------------------------------------------


def printed_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().out.splitlines() if "duet.join_duet(" in line]
    assert len(lines) == 1, lines
    return lines[0].split("run:", 1)[1].strip()


def test_the_line_to_paste_names_no_url_when_it_is_the_default(
    signaling_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(startup, "DEFAULT_SIGNALING_URL", signaling_url)
    with duet.launch_duet() as d:
        assert d.signaling_url == signaling_url
        assert printed_line(capsys) == f'd = duet.join_duet("{d.session_id}")'
    with duet.launch_duet(loopback=True):
        assert printed_line(capsys) == "d = duet.join_duet(loopback=True)"


def test_the_line_to_paste_names_the_url_from_the_environment(
    signaling_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DUET_SIGNALING_URL", signaling_url + "/")
    with duet.launch_duet() as d:
        assert d.signaling_url == signaling_url
        assert (
            printed_line(capsys) == f'd = duet.join_duet("{d.session_id}", signaling_url="{signaling_url}")'
        )


# ---- L. the start-up allowlist report ----------------------------------------------------------------------------


def test_launch_reports_allowlist_entries_torch_lacks_and_still_launches(
    signaling_url: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    mine = DEFAULT_ALLOWLIST.extend(functions=["torch.no_such_function"])
    with caplog.at_level(logging.WARNING, logger="duet.session"):
        with duet.launch_duet(signaling_url=signaling_url, allowlist=mine) as d:
            assert d._allowlist_check is not None
            assert d._allowlist_check.result(timeout=60) == ["torch.no_such_function"]
            assert d.status == "waiting"
    warned = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "duet.session"
    ]
    assert len(warned) == 1 and "torch.no_such_function" in warned[0] and torch.__version__ in warned[0]
    lines = [line for line in capsys.readouterr().out.splitlines() if "allowlist" in line]
    assert lines == [
        f"duet: torch {torch.__version__} lacks 1 allowlist entries (refused): torch.no_such_function"
    ]


def test_launch_with_a_complete_allowlist_reports_nothing(
    signaling_url: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="duet.session"):
        with duet.launch_duet(signaling_url=signaling_url) as d:
            assert d._allowlist_check is not None and d._allowlist_check.result(timeout=60) == []
    assert "allowlist" not in capsys.readouterr().out
    assert not [r for r in caplog.records if r.name == "duet.session" and r.levelno >= logging.WARNING]


# ---- K. before the owner approves a join, it serves neither echo nor error -------------------------------------


def test_owner_serves_no_echo_or_error_before_the_join_is_approved(signaling_url: str) -> None:
    from test_hostile_e2e import attach_without_hello, call

    with duet.launch_duet(signaling_url=signaling_url, quiet=True, approve_join=True) as owner:
        raw = attach_without_hello(owner.session_id, signaling_url)
        try:
            owner.wait_for_peer(timeout=20)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # the owner must not even warn about what the peer says
                for header in ({"t": "echo"}, {"t": "error", "kind": "ValueError", "message": "look at me"}):
                    reply = call(raw, header)
                    assert (reply["t"], reply["kind"]) == ("error", "PermissionDenied"), header
                    assert "not approved" in reply["message"]
            assert len(owner.requests) == 0  # and no join request was made for it
        finally:
            raw.close()
