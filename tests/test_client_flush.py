"""The user's thread hands a burst of calls to the loop thread as it makes them (``Remote._queue``), so that
the owner starts on the first calls of a training epoch while the scientist is still making the rest."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from duet import loop
from duet.remote import client as client_module
from duet.remote.client import Remote
from duet.remote.pointer import RemoteNamespace


class Frames:
    """A channel that counts the calls in each frame of ops; each send takes ``seconds`` (the interpreter
    lock released), as a loop thread busy with the transport would."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.threads: set[str] = set()
        self.seconds = seconds

    def send(self, header: dict[str, Any], buffers: Any = (), **kw: Any) -> None:
        if header["t"] == "ops":
            self.threads.add(threading.current_thread().name)
            self.sizes.append(sum(op["k"] != "del" for op in header["ops"]))
            time.sleep(self.seconds)


def _burst(th: Any, n: int) -> None:
    x = th.zeros(3)
    for _ in range(n - 1):
        x = x + 1


def _busy_loop(seconds: float) -> None:
    """Keep the loop thread away (asleep) for a while from now."""
    loop.get_loop().call_soon_threadsafe(time.sleep, seconds)


@pytest.fixture
def remote(monkeypatch: pytest.MonkeyPatch) -> tuple[Remote, Frames, Any]:
    # every hand-off completes: the frames' sizes then depend on the rule alone, not on the machine's load
    monkeypatch.setattr(client_module, "_HANDOFF_SECONDS", 30.0)
    frames = Frames(0.1)
    remote = Remote(lambda: frames, lambda: "owner")  # type: ignore[arg-type,return-value]
    return remote, frames, RemoteNamespace(remote, "torch")


def test_a_burst_leaves_in_frames_that_double_from_the_first_48_calls(remote: Any) -> None:
    r, frames, th = remote
    _busy_loop(0.1)  # the loop thread comes back long after the user's thread has made 48 calls
    _burst(th, 1500)
    r.flush()
    # the user's thread waited for the loop thread at 48 calls, then at 96, 192, 384 and 768 more (each
    # frame's send keeps the loop thread away for longer than those calls take): without the hand-offs,
    # the calls made meanwhile would all have left in the second frame
    assert frames.sizes == [48, 96, 192, 384, 768, 12]
    assert frames.threads == {"duet-loop"}


def test_a_pause_starts_a_new_burst_whose_first_frame_leaves_early(remote: Any) -> None:
    r, frames, th = remote
    _busy_loop(0.1)
    _burst(th, 1500)
    r.flush()
    first = len(frames.sizes)
    time.sleep(3 * client_module._BURST_GAP)
    _busy_loop(0.1)
    _burst(th, 200)
    r.flush()
    assert frames.sizes[first:] == [48, 96, 56]  # not 200 at once, after the last burst's 1,536


def test_calls_made_while_the_loop_thread_is_away_lose_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # a hand-off that times out (the loop thread busy elsewhere) only lets the calls pile up: they leave
    # with the next flush, in order
    monkeypatch.setattr(client_module, "_HANDOFF_SECONDS", 0.0)
    frames = Frames()
    r = Remote(lambda: frames, lambda: "owner")  # type: ignore[arg-type,return-value]
    r._scheduled = True  # as if a flush were asked for and the loop thread never came
    _burst(RemoteNamespace(r, "torch"), 500)
    assert frames.sizes == [] and len(r._ops) == 500
    r.flush()
    assert frames.sizes == [500]


def test_calls_made_on_the_loop_thread_never_wait_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "_HANDOFF_SECONDS", 5.0)  # a wait would show
    frames = Frames()
    r = Remote(lambda: frames, lambda: "owner")  # type: ignore[arg-type,return-value]

    async def burst() -> float:
        start = time.monotonic()
        _burst(RemoteNamespace(r, "torch"), 200)  # its flush can only run after this returns
        return time.monotonic() - start

    assert loop.run(burst(), timeout=30) < 2.5
    r.flush()
    assert sum(frames.sizes) == 200
