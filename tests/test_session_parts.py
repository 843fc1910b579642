"""Unit tests of the session's parts that need no peer: identity, ICE fallback, loop bridge, ICE config."""

from __future__ import annotations

import asyncio
import pkgutil
import stat
from pathlib import Path

import aioice.ice
import pytest

import duet
from duet import connect, ice, loop
from duet.identity import Identity, fingerprint, verify


def test_identity_is_kept_with_mode_0600_and_stable(tmp_path: Path) -> None:
    first = Identity.load_or_create(tmp_path / "cfg")
    key = tmp_path / "cfg" / "identity.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "cfg").stat().st_mode) == 0o700
    again = Identity.load_or_create(tmp_path / "cfg")
    assert again.fingerprint == first.fingerprint
    assert len(first.fingerprint) == 19 and first.fingerprint.count("-") == 3
    assert Identity.generate().fingerprint != first.fingerprint


def test_identity_signatures_verify_and_forgeries_do_not(tmp_path: Path) -> None:
    me = Identity.generate()
    sig = me.sign(b"offer")
    verify(me.verify_key, b"offer", sig)
    with pytest.raises(duet.SignalingError):
        verify(me.verify_key, b"offer!", sig)
    with pytest.raises(duet.SignalingError):
        verify(Identity.generate().verify_key, b"offer", sig)
    assert fingerprint(me.verify_key) == me.fingerprint


def test_ice_fallback_offers_loopback_only_when_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    ice.install()
    ice.install()  # idempotent
    wrapped = aioice.ice.get_host_addresses
    assert getattr(wrapped, "__duet_fallback__", False)
    monkeypatch.setattr(ice, "_original", None)
    inner = wrapped.__wrapped__  # type: ignore[attr-defined]
    assert wrapped(use_ipv4=True, use_ipv6=False) == (inner(use_ipv4=True, use_ipv6=False) or ["127.0.0.1"])
    assert wrapped(use_ipv4=False, use_ipv6=False) == []


def test_ice_servers_pass_through_and_default_is_none() -> None:
    assert connect.ice_configuration(None).iceServers == []  # never aiortc's public default
    conf = connect.ice_configuration(
        ["stun:stun.example.org:3478", {"urls": "turn:t.example.org", "username": "u", "credential": "c"}]
    )
    assert [s.urls for s in conf.iceServers] == ["stun:stun.example.org:3478", "turn:t.example.org"]
    assert conf.iceServers[1].username == "u" and conf.iceServers[1].credential == "c"
    with pytest.raises(ValueError, match="urls"):
        connect.ice_configuration([{"url": "stun:x"}])


def test_loop_bridge_runs_coroutines_and_refuses_reentry() -> None:
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    assert loop.run(double(21)) == 42

    async def reenter() -> None:
        coro = double(1)
        loop.run(coro)

    with pytest.raises(RuntimeError, match="its own event-loop thread"):
        loop.run(reenter())
    with pytest.raises(duet.RequestTimeout):
        loop.run(asyncio.sleep(5), timeout=0.05)


def test_errors_are_one_tree_and_exported() -> None:
    names = [
        "SignalingError", "ConnectionError", "ProtocolError", "PermissionDenied",
        "RequestDenied", "RequestTimeout", "RemoteError", "QuotaExceeded",
    ]  # fmt: skip
    for name in names:
        assert issubclass(getattr(duet, name), duet.DuetError)
        assert name in duet.__all__
    err = duet.RemoteError("ValueError", "bad shape")
    assert (err.remote_type, err.remote_message, str(err)) == (
        "ValueError",
        "bad shape",
        "ValueError: bad shape",
    )


def test_public_names_are_exactly_all() -> None:
    public = {n for n in dir(duet) if not n.startswith("_")}
    modules = {
        m.name for m in pkgutil.iter_modules(duet.__path__)
    }  # submodules become attributes once imported
    assert public - modules == set(duet.__all__)


def test_join_without_id_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(duet.SignalingError, match="session ID"):
        duet.join_duet()
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(duet.SignalingError, match="launch_duet\\(loopback=True\\)"):
        duet.join_duet(loopback=True)
    with pytest.raises(duet.SignalingError, match="malformed|mistyped"):
        duet.join_duet("duet-not-an-id")


def test_launch_prints_the_line_to_paste_with_a_non_default_url(
    signaling_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with duet.launch_duet(signaling_url=signaling_url) as d:
        out = capsys.readouterr().out
        assert d.session_id in out
        assert f'duet.join_duet("{d.session_id}", signaling_url="{signaling_url}")' in out
        assert d.status == "waiting"
        assert "waiting" in repr(d) and "owner" in d._repr_html_()
    assert d.status == "closed"


def test_a_taken_loopback_port_fails_fast_with_advice() -> None:
    import socket

    with socket.socket() as sock:  # something that is not a duet signaling server holds the port
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(duet.SignalingError, match="port is taken"):
            duet.launch_duet(signaling_url=f"http://127.0.0.1:{port}", quiet=True)
