"""Shared fixtures: the real signaling server on 127.0.0.1 port 0, and peers in their own processes."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import duet
from duet import loop
from duet.signaling.server import start_server

HERE = Path(__file__).parent
ROOT = HERE.parent


@pytest.fixture(autouse=True, scope="session")
def _isolated_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Identities and loopback files of the tests live in a temp dir, not the user's home."""
    cfg = tmp_path_factory.mktemp("config")
    old = {k: os.environ.get(k) for k in ("DUET_CONFIG_DIR", "TMPDIR", "DUET_SIGNALING_URL")}
    os.environ["DUET_CONFIG_DIR"] = str(cfg)
    os.environ.pop("DUET_SIGNALING_URL", None)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def signaling_url() -> Iterator[str]:
    """A real signaling server for the whole test session, on a free loopback port."""
    runner, port = loop.run(start_server("127.0.0.1", 0), timeout=30)
    yield f"http://127.0.0.1:{port}"
    loop.run(runner.cleanup(), timeout=30)


class Peer:
    """A peer script in its own process: send it line commands, read its one-line reports."""

    def __init__(self, script: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(HERE / "peers" / script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, prefix: str, timeout: float = 30) -> list[str]:
        """The next line starting with ``prefix``, split into words (fails on EOF or timeout)."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"no {prefix!r} line within {timeout} s; stderr:\n{''.join(self.stderr)}"
                ) from None
            if line is None:
                raise AssertionError(f"peer exited before {prefix!r}; stderr:\n{''.join(self.stderr)}")
            if line.startswith(prefix):
                return line.split(" ")
            if line.startswith("ERR"):
                raise AssertionError(f"peer reported {line}")

    def run(self, code: str, timeout: float = 60) -> None:
        """Run test code in the owner's process (see peers/owner.py `exec`)."""
        self.send("exec " + code.replace("\n", "\\n"))
        self.expect("OK", timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("exit")
                self.proc.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def owner_process(signaling_url: str) -> Iterator[Peer]:
    """An owner in another process, launched against the test signaling server; its session ID is `.session_id`."""
    peer = Peer("owner.py", "--url", signaling_url)
    peer.session_id = peer.expect("SESSION", 60)[1]  # type: ignore[attr-defined]
    yield peer
    peer.close()


@contextmanager
def owner_and_scientist(
    signaling_url: str, *setup: str, name: str, owner_args: tuple[str, ...] = ()
) -> Iterator[tuple[Peer, duet.Duet]]:
    """An owner in another process with ``setup`` code run in its namespace, and this process joined to it as
    the scientist ``name``; both connected on entry, both closed on exit."""
    owner = Peer("owner.py", "--url", signaling_url, *owner_args)
    try:
        session_id = owner.expect("SESSION", 60)[1]
        for code in setup:
            owner.run(code)
        d = duet.join_duet(session_id, signaling_url=signaling_url, name=name)
        owner.send("wait-peer")
        owner.expect("CONNECTED")
        yield owner, d
        d.close()
    finally:
        owner.close()
