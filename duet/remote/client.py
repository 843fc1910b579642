"""The scientist's side of remote execution: id allocation, op batching, blocking gets and requests.

Calls are pipelined: each call allocates its result's id here, queues an op and returns a pointer at once.
Ops queued in the same loop tick travel in one frame; during a burst of calls (a training epoch) the user's
thread hands the queue to the loop thread at 48 calls, then at twice as many each time (see ``_queue``), so
that the owner starts on the first calls while the rest are being made. Releases from garbage-collected
pointers are queued without any I/O (a deque append from the finalizer) and ride with the next batch or the
periodic flush.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import functools
import itertools
import logging
import threading
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from .. import codec, loop
from ..errors import ConnectionError, ProtocolError, RemoteError
from ..progress import transfer_bar
from .allowlist import DEFAULT_ALLOWLIST
from .handle import RequestHandle
from .planner import Planner, refs_of, without
from .pointer import Pointer
from .replies import raise_remote, settle
from .tables import Tables, default_tables

if TYPE_CHECKING:
    from ..transport import Channel, Message

__all__ = ["Remote", "RemoteWarning", "RequestHandle", "raise_remote"]

log = logging.getLogger("duet.remote")

_FIRST_HANDOFF = 48  # ops queued before the user's thread hands them to the loop thread (see _queue)
_HANDOFF_SECONDS = 0.002  # the longest the user's thread waits for the loop thread to take them
_BURST_GAP = 0.01  # a pause between calls that ends a burst (see _queue)
_HOLD_SECONDS = 0.005  # the longest a step's first ops wait for the rest of it (see Remote._flush_burst)


_PLAIN = frozenset({type(None), bool, float, str})
_PROPERTY_NAMES = 1024  # names is_property remembers per tables (bounded, whatever names a program reads)


def _flat_tree(value: Any) -> list[Any] | None:
    """What :func:`codec.encode` makes of a list of pointers, plain scalars and slices of ints, or of a dict
    of them with string keys, built without its walk; None for anything else (the codec then encodes it)."""
    t = type(value)
    if t is list:
        return _flat_items(["list"], value)
    if t is dict:
        if not value:
            return ["dict"]
        if not all(type(k) is str for k in value):
            return None
        return _flat_items(["dict"], [x for kv in value.items() for x in kv])
    return None


def _flat_items(out: list[Any], items: Any) -> list[Any] | None:
    """``out`` with each of ``items`` as the codec encodes it (see _flat_tree), or None."""
    if len(items) > 32:
        return None
    for x in items:
        tx = type(x)
        if tx in _PLAIN or (tx is int and -(1 << 63) <= x < 1 << 63):
            out.append(x)
        elif tx is slice:  # a batch's ``x[i : i + 32]``
            parts: list[Any] = ["slice"]
            for p in (x.start, x.stop, x.step):
                if p is None or (type(p) is int and -(1 << 63) <= p < 1 << 63):
                    parts.append(p)
                else:
                    return None
            out.append(parts)
        elif isinstance(x, Pointer) and type(ref := x._duet_id) is str:
            out.append(["ptr", ref])
        else:
            return None
    return out


class RemoteWarning(UserWarning):
    """A remote call failed, and its result had already been dropped (``x[0] = v``, ``loss.backward()``)."""


class Remote:
    """Everything the scientist's pointers need: one per session."""

    def __init__(self, channel_of: Callable[[], Channel], peer_name: Callable[[], str]) -> None:
        self._channel_of = channel_of
        self._ids = itertools.count(1)
        self._ops: collections.deque[tuple[dict[str, Any], list[Any]]] = collections.deque()
        self._releases: collections.deque[str] = collections.deque()
        self._lock = threading.Lock()
        self._taken = threading.Condition(self._lock)  # notified as a flush takes the queued ops
        self._flushes = 0  # flushes that took the queue, for the hand-off in _queue
        self._handoff_at = _FIRST_HANDOFF
        self._asked = 0.0  # when the user's thread last asked for a flush
        self._scheduled = False
        self._hold_timer: asyncio.TimerHandle | None = None
        self.requests: list[RequestHandle] = []
        self.failures: dict[str, RemoteError] = {}
        self._live: set[str] = set()  # the results the scientist's own pointers hold (see _emit, _release)
        self._dropped: collections.deque[RemoteError] = collections.deque(maxlen=100)
        self.refused: collections.deque[RemoteError] = collections.deque(maxlen=1000)
        self.ops_sent = 0
        self.tables: Tables = default_tables()  # the owner's, once its welcome has described them
        # is_property's answers for pointers without metadata, by name, and the tables they came from
        self._properties: tuple[Tables | None, dict[str, bool]] = (None, {})
        self.planner = Planner()
        self.planner.enabled = False  # until the owner's welcome says it runs plans

    # ---- ids, encoding, queueing -------------------------------------------------------------------

    def new_id(self) -> str:
        return f"s{next(self._ids)}"

    @staticmethod
    def _pointer_id(obj: Any) -> str | None:
        return obj._duet_id if isinstance(obj, Pointer) else None

    def _encode(self, value: Any, buffers: list[Any]) -> Any:
        flat = _flat_tree(value)  # most calls' arguments: pointers and plain numbers, strings, None
        if flat is not None:
            return flat
        return self._encode_tree(value, buffers)

    def _encode_args(self, args: tuple[Any, ...], buffers: list[Any]) -> Any:
        """:meth:`_encode` of ``list(args)``."""
        flat = _flat_items(["list"], args)
        if flat is not None:
            return flat
        return self._encode_tree(list(args), buffers)

    def _encode_tree(self, value: Any, buffers: list[Any]) -> Any:
        try:
            return codec.encode(value, buffers, pointer_id=self._pointer_id)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"cannot send this argument to the owner: {exc}") from exc

    def _queue(self, op: dict[str, Any], buffers: list[Any]) -> None:
        if buffers:  # a snapshot: the caller may change its tensors in place before the frame leaves
            buffers = [bytes(b) for b in buffers]
        with self._lock:
            self._ops.append((op, buffers))
            if not self._scheduled:
                self._scheduled = True
                now = time.perf_counter()
                if now - self._asked > _BURST_GAP:
                    self._handoff_at = _FIRST_HANDOFF  # a new burst of calls
                self._asked = now
                loop.get_loop().call_soon_threadsafe(self._flush_burst)
            elif len(self._ops) >= self._handoff_at and not loop.in_loop_thread():
                # a flush is due, but the loop thread waits for the interpreter lock that this thread
                # holds, and would get it only after the 5 ms switch interval, or once this burst of
                # calls is over: wait (the lock released) until it has taken the queue, so that the owner
                # starts on a burst's first calls while the rest are being made. Each hand-off of a burst
                # waits for twice as many ops as the last: a few frames, the first of them early.
                self._handoff_at *= 2
                flushes = self._flushes
                self._taken.wait_for(lambda: self._flushes != flushes, _HANDOFF_SECONDS)

    def _release(self, oid: str) -> None:
        self._live.discard(oid)  # from a pointer's finalizer: no lock, no I/O
        self._releases.append(oid)

    def _flush_burst(self) -> None:
        """(loop thread) The flush the user's thread asks for as it queues ops: as :meth:`_flush`, but the
        frame's last ops wait for the next frame if they begin a plan's step without finishing it (see
        :meth:`Planner.held_from`): the step then travels whole, as one run, instead of op by op, each
        op checked in full. A held step leaves with the next frame, the next blocking call, or after
        ``_HOLD_SECONDS`` at the latest."""
        self._flush(hold=True)

    def _flush(self, hold: bool = False) -> None:
        """(loop thread) Send every queued op, then the releases, in one frame.

        Releases are drained *before* the ops are taken: an op that uses a pointer was queued while the
        pointer was alive, so before its release, so it is in this batch or an earlier one. (Taking the ops
        first would let a release overtake the op that uses it, queued meanwhile by the user's thread.)
        """
        releases = []
        while self._releases:
            releases.append(self._releases.popleft())
        with self._lock:
            # ops the user's thread queues from now on wait for the next flush, which is scheduled at
            # the end: after the transport's own task, so that this frame is on the wire first
            self._scheduled = True
            batch = list(self._ops)
            self._ops.clear()
            self._flushes += 1
            self._taken.notify_all()
            # which results still have a pointer, seen under the lock the user's thread queues ops under:
            # an op queued after this can only use a result whose pointer is alive now
            alive = (
                {oid for op, _ in batch if type(oid := op.get("o")) is str and oid in self._live}
                if self.planner.enabled
                else set()
            )
        held: list[tuple[dict[str, Any], list[Any]]] = []
        try:
            held = self._send(batch, releases, alive, hold)
        finally:
            with self._lock:
                if held:  # back at the head of the queue, before anything queued meanwhile
                    self._ops.extendleft(reversed(held))
                if len(self._ops) > len(held):
                    loop.get_loop().call_soon(self._flush_burst)
                else:
                    self._scheduled = False  # the next op queued asks for a flush again
                    if held:  # (one timer: from the last time a step was held)
                        if self._hold_timer is not None:
                            self._hold_timer.cancel()
                        self._hold_timer = loop.get_loop().call_later(_HOLD_SECONDS, self._flush)

    def _send(
        self,
        batch: list[tuple[dict[str, Any], list[Any]]],
        releases: list[str],
        alive: set[str],
        hold: bool = False,
    ) -> list[tuple[dict[str, Any], list[Any]]]:
        """Send a batch as one frame; returns the ops held back for the next one (see _flush_burst)."""
        held: list[tuple[dict[str, Any], list[Any]]] = []
        if hold and self.planner.enabled:
            try:
                cut = self.planner.held_from([op for op, _ in batch])
            except Exception:  # noqa: BLE001 - a planner bug must not cost the session: send everything
                log.exception("planning a frame failed: sending ops one by one from now on")
                self.planner.enabled = False
                cut = len(batch)
            batch, held = batch[:cut], batch[cut:]
            if held:  # a held op may use pointers whose releases are queued already: they wait with it
                used = {ref for op, _ in held for ref in refs_of(op)}
                later = [r for r in releases if r in used]
                if later:
                    releases = [r for r in releases if r not in used]
                    self._releases.extend(later)
        ops: list[dict[str, Any]] = []
        buffers: list[Any] = []
        for op, bufs in batch:
            if bufs:
                op["b"] = [len(buffers), len(bufs)]
                buffers.extend(bufs)
            ops.append(op)
        if self.planner.enabled:
            try:
                ops, dropped = self.planner.compress(ops, alive, [op for op, _ in held])
            except Exception:  # noqa: BLE001 - a planner bug must not cost the session: send the ops as they are
                log.exception("planning a frame failed: sending ops one by one from now on")
                self.planner.enabled = False
            else:
                if dropped:
                    releases = without(releases, dropped)
        if releases:
            ops.append({"k": "del", "ids": releases})
        if not ops:
            return held
        try:
            self._channel_of().send({"t": "ops", "ops": ops}, buffers)
            self.ops_sent += len(ops)
        except ConnectionError:
            pass  # the session is over; the blocking call that follows will say so
        return held

    def flush(self) -> None:
        """Send what is queued now, and return once it is on the channel (not from the loop thread)."""

        async def now() -> None:
            self._flush()

        loop.run(now(), timeout=30)

    def flush_soon(self) -> None:
        """Send what is queued (ops and releases) in the loop's next tick, without waiting."""
        loop.get_loop().call_soon_threadsafe(self._flush)

    def flush_releases(self) -> None:
        """(loop thread) Periodic: send releases that no batch carried."""
        if self._releases and not self._scheduled:
            self._flush()

    def _new_pointer(self, oid: str) -> Pointer:
        return Pointer(self, oid)

    # ---- building ops --------------------------------------------------------------------------------

    def call(self, path: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Pointer:
        buffers: list[Any] = []
        op = {
            "k": "call",
            "p": path,
            "a": self._encode_args(args, buffers),
            "kw": self._encode(kwargs, buffers) if kwargs else ["dict"],
        }
        return self._emit(op, buffers)

    def method(self, ptr: Pointer, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Pointer:
        buffers: list[Any] = []
        op: dict[str, Any] = {"k": "meth", "s": ptr._duet_id, "n": name}
        if args:
            op["a"] = self._encode_args(args, buffers)
        if kwargs:
            op["kw"] = self._encode(kwargs, buffers)
        return self._emit(op, buffers)

    def attr(self, ptr: Pointer, name: str) -> Pointer:
        return self._emit({"k": "attr", "s": ptr._duet_id, "n": name}, [])

    def python(self, name: str, args: tuple[Any, ...]) -> Pointer:
        buffers: list[Any] = []
        return self._emit({"k": "py", "n": name, "a": self._encode_args(args, buffers)}, buffers)

    def send_value(self, value: Any) -> Pointer:
        buffers: list[Any] = []
        return self._emit({"k": "put", "v": self._encode(value, buffers)}, buffers)

    def container(self, children: dict[str, Pointer], label: str = "Module") -> Pointer:
        return self._emit(
            {"k": "mod", "c": {k: p._duet_id for k, p in children.items()}, "n": label[:100]}, []
        )

    def context(self, path: str, enter: bool) -> None:
        self._queue({"k": "ctx", "p": path, "e": enter}, [])

    def _emit(self, op: dict[str, Any], buffers: list[Any]) -> Pointer:
        oid = f"s{next(self._ids)}"  # (new_id and _new_pointer, inline: once per call of a training loop)
        op["o"] = oid
        ptr = Pointer(self, oid)
        self._live.add(oid)
        self._queue(op, buffers)
        return ptr

    # ---- local checks (the owner checks again: these only fail early) ---------------------------------

    def check_path(self, path: str) -> None:
        self.tables.check_path(path)

    def is_context(self, path: str) -> bool:
        return self.tables.is_context(path)

    def check_python_type(self, name: str) -> None:
        DEFAULT_ALLOWLIST.python_type(name)

    @staticmethod
    def local_constant(path: str) -> Any:
        """``d.torch.float32`` is just ``torch.float32``: dtypes are data, not remote objects."""
        parts = path.split(".")
        if len(parts) == 2 and isinstance(value := getattr(torch, parts[1], None), torch.dtype):
            return value
        return None

    def is_property(self, ptr: Pointer, name: str) -> bool:
        """Whether ``ptr.name`` reads an attribute (a property, a module's layer or weight) or names a method,
        by the owner's tables; PermissionDenied for a tensor's name that neither allows (see Tables)."""
        meta = ptr._duet_meta
        if meta:
            return self.tables.is_property(
                name, meta.get("type"), lambda: ptr._duet_metadata("type").get("type")
            )
        # a pointer with no metadata yet (a loop's ``loss.backward``): the tables' answer for the name alone
        # is kept, per tables, unless they had to ask the owner for the object's type
        tables = self.tables
        memo = self._properties
        if memo[0] is not tables:
            memo = self._properties = (tables, {})
        known = memo[1].get(name)
        if known is not None:
            return known
        asked = False

        def type_of() -> Any:
            nonlocal asked
            asked = True
            return ptr._duet_metadata("type").get("type")

        result = tables.is_property(name, None, type_of)
        if not asked and len(memo[1]) < _PROPERTY_NAMES:
            memo[1][name] = result
        return result

    # ---- blocking calls --------------------------------------------------------------------------------

    def _request_sync(self, header: dict[str, Any], timeout: float, progress: Any = None) -> Message:
        """Flush the queued ops and send ``header``, on the loop thread, and wait here for the reply: two
        callbacks, no task, so the reply reaches this thread one loop iteration after it arrives."""
        if loop.in_loop_thread():
            raise RuntimeError("duet's blocking API cannot be called from its own event-loop thread")
        done: concurrent.futures.Future[Message] = concurrent.futures.Future()

        def start() -> None:
            try:
                self._flush()
                reply = self._channel_of().request_future(header, timeout=timeout, progress=progress)
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                done.set_exception(exc)
                return
            reply.add_done_callback(functools.partial(_settle_future, done))

        # an empty context, as loop.submit: output printed meanwhile belongs to no finished notebook cell
        loop.get_loop().call_soon_threadsafe(start, context=contextvars.Context())
        try:
            return done.result()
        finally:
            self.warn_dropped()

    def warn_dropped(self) -> None:
        """(user's thread) Warn about failed calls whose results nobody held, so nothing else raised them."""
        while self._dropped:
            error = self._dropped.popleft()
            warnings.warn(
                f"a remote call whose result was not kept failed: {error}", RemoteWarning, stacklevel=4
            )

    def metadata(self, ptr: Pointer) -> dict[str, Any]:
        reply = self._request_sync({"t": "meta", "o": ptr._duet_id}, timeout=60)
        if reply.header.get("t") == "error":
            raise_remote(reply.header)
        meta = reply.header.get("meta")
        if not isinstance(meta, dict):
            raise ProtocolError("the owner sent no metadata")
        return meta

    def store_listing(self) -> list[dict[str, Any]]:
        reply = self._request_sync({"t": "store"}, timeout=60)
        items = reply.header.get("items")
        if not isinstance(items, list):
            raise ProtocolError("the owner sent no store listing")
        return [i for i in items if isinstance(i, dict)]

    def request(self, ptr: Pointer, *, name: str, reason: str, timeout_secs: float | None) -> RequestHandle:
        handle = RequestHandle(name, reason, ptr)
        self.requests.append(handle)
        header = {
            "t": "req",
            "o": ptr._duet_id,
            "name": str(name),
            "reason": str(reason),
            "timeout": -1 if timeout_secs is None else float(timeout_secs),
            "block": True,
            "delete": False,
        }
        wait = None if timeout_secs is None or timeout_secs < 0 else timeout_secs + 30

        async def go() -> None:
            self._flush()
            try:
                reply = await self._channel_of().request(header, timeout=wait)
                settle(handle, reply, strict=False, warn=False)  # its status says so, not a warning
            except Exception as exc:  # noqa: BLE001 - kept on the handle, raised by wait()
                handle._settle("failed", error=exc)

        fut = loop.submit(go())
        handle._future = fut  # type: ignore[attr-defined]  # keeps the task referenced
        return handle

    def get(
        self,
        ptr: Pointer,
        *,
        request_block: bool,
        name: str,
        reason: str,
        timeout_secs: float,
        delete_obj: bool,
        strict: bool,
    ) -> Any:
        handle = RequestHandle(name, reason, ptr)
        self.requests.append(handle)
        header = {
            "t": "req",
            "o": ptr._duet_id,
            "name": str(name),
            "reason": str(reason),
            "timeout": float(timeout_secs),
            "block": bool(request_block),
            "delete": bool(delete_obj),
        }
        wait = None if timeout_secs < 0 else float(timeout_secs) + 30
        bar = transfer_bar(f"receiving {name or 'value'}")
        reply = self._request_sync(
            header, timeout=wait if wait is not None else 10 * 365 * 86400, progress=bar
        )
        return settle(handle, reply, strict=strict or not request_block, blocking=request_block)

    # ---- notices from the owner ------------------------------------------------------------------------

    def on_failed(self, msg: Message) -> None:
        """A pipelined op failed. Kept for display only: the blocking call that depends on it raises."""
        oid = msg.header.get("o")
        error = RemoteError(str(msg.header.get("kind", ""))[:100], str(msg.header.get("message", ""))[:1000])
        if isinstance(oid, str) and oid:
            self.failures[oid] = error
            if len(self.failures) > 10_000:
                self.failures.pop(next(iter(self.failures)))
            if oid not in self._live:  # nobody holds its result: say so at the next blocking call
                self._dropped.append(error)
        else:  # an op the owner could not even attribute to a result (a malformed op)
            self.refused.append(error)


def _settle_future(done: concurrent.futures.Future[Any], reply: asyncio.Future[Any]) -> None:
    if reply.cancelled():
        done.cancel()
    elif (exc := reply.exception()) is not None:
        done.set_exception(exc)
    else:
        done.set_result(reply.result())


async def periodic_release(remote: Remote, stop: asyncio.Event, every: float = 0.25) -> None:
    """Send releases of collected pointers even when no call is being made."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every)
        except asyncio.TimeoutError:
            remote.flush_releases()
