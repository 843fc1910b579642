"""The background event-loop thread that owns every aiortc/aiohttp object, and the sync bridge to it.

Jupyter already runs an asyncio loop on the main thread, and a cell that blocks must not stop the owner
from answering the scientist. So each process runs one daemon thread with its own loop; the public API is
synchronous and hands coroutines to it with :func:`run` (no ``nest_asyncio``).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextvars
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from .errors import RequestTimeout

__all__ = ["get_loop", "run", "submit", "in_loop_thread"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    loop.run_forever()


def get_loop() -> asyncio.AbstractEventLoop:
    """The process's duet loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive():
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            thread = threading.Thread(target=_serve, args=(loop, ready), name="duet-loop", daemon=True)
            thread.start()
            ready.wait()
            _loop, _thread = loop, thread
        return _loop


def in_loop_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule a coroutine on the duet loop and return a thread-safe future.

    The task starts in an empty ``contextvars`` context, not the caller's: in Jupyter the caller's context
    names the cell that ran it, and output printed later by the session (``print_local``, progress bars)
    must go to the cell that is running then, not to a finished one.
    """
    loop = get_loop()
    result: concurrent.futures.Future[T] = concurrent.futures.Future()

    def start() -> None:
        if result.cancelled():
            coro.close()
            return
        task = loop.create_task(coro)

        def finished(t: asyncio.Task[T]) -> None:
            if result.cancelled():
                return
            if t.cancelled():
                result.cancel()
            elif (exc := t.exception()) is not None:
                result.set_exception(exc)
            else:
                result.set_result(t.result())

        task.add_done_callback(finished)
        result.add_done_callback(lambda f: f.cancelled() and loop.call_soon_threadsafe(task.cancel))

    loop.call_soon_threadsafe(start, context=contextvars.Context())
    return result


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run a coroutine on the duet loop and wait for its result from any other thread."""
    if in_loop_thread():
        coro.close()
        raise RuntimeError("duet's blocking API cannot be called from its own event-loop thread")
    fut = submit(coro)
    try:
        return fut.result(timeout)
    except concurrent.futures.TimeoutError as exc:
        fut.cancel()
        raise RequestTimeout(f"no answer within {timeout} s") from exc


def _shutdown() -> None:
    loop = _loop
    if loop is not None and loop.is_running():
        loop.call_soon_threadsafe(loop.stop)


atexit.register(_shutdown)
