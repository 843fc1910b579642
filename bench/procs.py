"""Peer processes for the benchmark: spawned, driven by commands over a pipe, always stopped and reaped."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

__all__ = ["Child", "serve_commands", "BenchError", "rss_bytes", "peak_rss_bytes", "reset_peak_rss"]

_CTX = multiprocessing.get_context("spawn")


class BenchError(RuntimeError):
    """A peer process failed, or did not answer in time."""


class Child:
    """A peer in its own (spawned) process. ``call`` sends a command and returns its answer.

    The child runs ``target(conn, *args)``; it reads ``(command, args)`` tuples and answers each with
    ``("ok", value)`` or ``("err", text)``. Leaving the ``with`` block asks it to exit, then terminates and
    finally kills it, so no process outlives the benchmark even when a scenario fails half-way.
    """

    def __init__(self, target: Callable[..., None], *args: Any, name: str = "bench-peer") -> None:
        self._conn, child_conn = _CTX.Pipe()
        self.proc = _CTX.Process(target=target, args=(child_conn, *args), name=name, daemon=True)
        self.proc.start()
        child_conn.close()

    def call(self, command: str, *args: Any, timeout: float = 120.0) -> Any:
        """Run one command in the child and return its result (raises BenchError on failure or timeout)."""
        try:
            self._conn.send((command, args))
            if not self._conn.poll(timeout):
                raise BenchError(f"{self.proc.name}: no answer to {command!r} within {timeout:.0f} s")
            status, value = self._conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            raise BenchError(
                f"{self.proc.name} died during {command!r} (exit code {self.proc.exitcode})"
            ) from exc
        if status != "ok":
            raise BenchError(f"{self.proc.name}: {command!r} failed:\n{value}")
        return value

    @property
    def pid(self) -> int:
        return int(self.proc.pid or 0)

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self._conn.send(("exit", ()))
            except OSError:
                pass
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self._conn.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_commands(
    conn: multiprocessing.connection.Connection, handlers: dict[str, Callable[..., Any]]
) -> None:
    """(in the child) Answer commands until ``exit`` or until the parent goes away."""
    _die_with_parent()
    while True:
        try:
            command, args = conn.recv()
        except (EOFError, OSError):
            return
        if command == "exit":
            return
        try:
            conn.send(("ok", handlers[command](*args)))
        except Exception:  # noqa: BLE001 - reported to the parent, which raises it
            conn.send(("err", traceback.format_exc()))


def _die_with_parent() -> None:
    """A watchdog thread: if the benchmark process disappears, this peer ends itself."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="bench-orphan-watch", daemon=True).start()


# ---- memory of this process, from /proc (Linux) ------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise BenchError(f"/proc/self/status has no {field}")


def rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """The peak RSS since the process started, or since the last :func:`reset_peak_rss`."""
    return _status_kb("VmHWM") * 1024


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
