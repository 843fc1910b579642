"""Garbage-collected pointers: the finalizer only queues the release; frames leave from the loop's flush."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from duet import loop
from duet.remote.client import Remote
from duet.remote.pointer import Pointer


class RaisingChannel:
    """A channel that must not be used: every send is recorded, then fails."""

    def __init__(self) -> None:
        self.sent: list[tuple[dict[str, Any], list[Any]]] = []

    def send(self, header: dict[str, Any], buffers: Any = (), **kw: Any) -> None:
        self.sent.append((header, list(buffers)))
        raise RuntimeError("no I/O from a finalizer")


class RecordingChannel(RaisingChannel):
    def send(self, header: dict[str, Any], buffers: Any = (), **kw: Any) -> None:
        self.sent.append((header, list(buffers)))


def test_dropping_a_pointer_queues_its_release_and_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    channel = RaisingChannel()
    looked_up: list[str] = []

    def channel_of() -> RaisingChannel:
        looked_up.append("channel")
        return channel

    def no_loop(*a: Any, **kw: Any) -> Any:
        raise AssertionError("the finalizer reached for the event loop")

    monkeypatch.setattr(loop, "get_loop", no_loop)
    monkeypatch.setattr(loop, "submit", no_loop)
    monkeypatch.setattr(loop, "run", no_loop)
    remote = Remote(channel_of, lambda: "owner")
    plain = Pointer(remote, "s1")
    del plain  # freed by reference counting
    in_cycle = Pointer(remote, "s2")
    cycle: list[Any] = [in_cycle]
    cycle.append(cycle)
    del in_cycle, cycle  # only the cycle collector frees this one
    assert list(remote._releases) == ["s1"]
    gc.collect()
    assert list(remote._releases) == ["s1", "s2"]  # both queued for release
    assert channel.sent == [] and looked_up == []  # and nothing was sent, not even a channel looked up
    published = Pointer(remote, "p0123456789abcdef", owned=False)  # published: never released
    del published
    gc.collect()
    assert list(remote._releases) == ["s1", "s2"]


def test_queued_releases_leave_in_one_frame_on_flush() -> None:
    channel = RecordingChannel()
    remote = Remote(lambda: channel, lambda: "owner")  # type: ignore[arg-type, return-value]
    pointers = [Pointer(remote, f"s{i}") for i in range(5)]
    del pointers
    gc.collect()
    assert channel.sent == []
    remote.flush_releases()  # what the loop's periodic flush runs
    ((header, buffers),) = channel.sent  # one frame carries every release
    ((release,),) = [header["ops"]]
    assert header["t"] == "ops" and buffers == [] and release["k"] == "del"
    assert sorted(release["ids"]) == [f"s{i}" for i in range(5)]
    assert not remote._releases
    remote.flush_releases()
    assert len(channel.sent) == 1  # nothing queued, nothing sent
