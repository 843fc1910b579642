"""The owner's side of a session: store, executor, request queue, and the messages that reach them."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import codec, loop, tuning
from .errors import DuetError, PermissionDenied, ProtocolError, QuotaExceeded
from .progress import transfer_bar
from .remote import guards, tables
from .remote.allowlist import Allowlist
from .remote.executor import Executor
from .remote.store import Entry, Quotas, Store
from .requests.queue import MAX_NAME, MAX_REASON, Request, RequestQueue

if TYPE_CHECKING:
    from .requests.record import RecordDB
    from .transport import Channel, Message

__all__ = ["OwnerService", "error_header"]

log = logging.getLogger("duet.owner")

MAX_PENDING_FRAMES = 64  # frames of calls received and not yet run before the owner reads no more
MAX_WAITERS = 64  # messages that may wait on one request (identical requests share one)
MAX_TIMEOUT = 7 * 86400.0  # the longest a request may wait for the owner
CLOSE_AFTER_REFUSAL = 1.0  # seconds a refused scientist has to read the refusal before the owner hangs up
_DECLINE = "no handler grants it (use request_block=True to ask the owner)"


def _warm_up() -> None:
    """(executor thread) Import what the guards need, then take the long-lived objects out of the
    garbage collector's way (see :mod:`duet.tuning`)."""
    guards.warm_up()
    tuning.freeze_long_lived()


def error_header(exc: BaseException) -> dict[str, Any]:
    kind = getattr(exc, "remote_type", None) or type(exc).__name__
    message = getattr(exc, "remote_message", None)
    return {"t": "error", "kind": kind, "message": str(exc if message is None else message)[:1000]}


class _Waiter:
    """Who waits for a request's decision: where to reply, and whether to free the object after. Keeps
    nothing else of the message (a parked request must not hold the peer's header or buffers)."""

    __slots__ = ("channel", "cid", "delete")

    def __init__(self, msg: Message, delete: bool) -> None:
        self.channel: Channel = msg.channel
        self.cid = msg.header.get("id")
        self.delete = delete

    def reply(self, header: dict[str, Any], buffers: list[Any] | None = None, progress: Any = None) -> None:
        if self.cid is not None and not self.channel.closed:
            self.channel.send({**header, "re": self.cid}, buffers or (), ordered=False, progress=progress)


class OwnerService:
    """Serves the scientist's messages from the owner's store, through the executor and the request queue."""

    def __init__(
        self,
        *,
        requester: Callable[[], str],
        approve_join: bool = False,
        db_path: Any = None,
        quotas: Quotas | None = None,
        allowlist: Allowlist | None = None,
    ) -> None:
        self._requester = requester
        self.requests = RequestQueue(on_decided=self._on_decided, value_of=self._value_of, db_path=db_path)
        db = self.requests.db
        self.store = Store(
            quotas,
            on_publish=(lambda e: db.record_object(_object_record(e))) if db else None,
            on_remove=(lambda e: db.record_object_removed(e.id)) if db else None,
        )
        self.executor = Executor(self.store, allowlist)
        self.log = self.executor.log
        self._welcome = tables.welcome(self.executor.allowlist)  # describes the allowlist (see tables)
        self._welcome["plans"] = True  # runs plans (duet.remote.plans): the scientist's client may send them
        # and reads a run's consecutive result ids as the first one's number (duet.remote.plans)
        self._welcome["run_ids"] = "first"
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="duet-exec")
        self._pending: collections.deque[asyncio.Future[None]] = collections.deque()  # frames
        self._waiting: dict[str, list[_Waiter]] = {}
        self._requests_made = 0
        self._approved = asyncio.Event()
        self._join_request: Request | None = None
        self._approve_join = approve_join
        if not approve_join:
            self._approved.set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def db(self) -> RecordDB | None:
        return self.requests.db

    def handlers(self) -> dict[str, Callable[[Message], Any]]:
        return {
            "hello": self._on_hello,
            "ops": self._guard(self._on_ops),
            "meta": self._guard(self._after_ops(self._on_meta)),
            "store": self._guard(self._after_ops(self._on_store)),
            "req": self._guard(self._after_ops(self._on_req)),
        }

    def start(self) -> None:
        """(loop thread) The scientist is connected: expire requests on time, and let the executor's own
        thread import torch's meta-device code now (~1.5 s once per process) rather than in the first call.
        It is that thread (not a daemon one) so that a process exiting meanwhile waits for it instead of
        aborting inside torch."""
        self._own(self._expiry())
        self._pool.submit(_warm_up)

    def _own(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.requests.close()

    def peer_gone(self) -> None:
        """The scientist's channel closed: what it asked for can no longer be delivered, so it expires
        (``decided_by="disconnected"``) instead of waiting in the owner's queue for nobody."""
        self.requests.expire_all("disconnected")

    async def _expiry(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            self.requests.expire_due()

    # ---- join approval -----------------------------------------------------------------------------

    def _on_hello(self, msg: Message) -> None:
        if not self._approve_join:
            msg.reply(self._welcome)
            return
        if self._join_request is None:
            req = Request(kind="join", reason="asks to join the session", requester=self._requester())
            try:
                self._join_request = self.requests.submit(req)
            except DuetError as exc:
                msg.reply(error_header(exc))
                return
        self._wait_for(self._join_request, msg, False)

    def _guard(self, handler: Callable[[Message], Any]) -> Callable[[Message], Any]:
        def guarded(msg: Message) -> Any:
            if not self._approved.is_set():
                msg.reply(error_header(PermissionDenied("the owner has not approved your join yet")))
                return None
            return handler(msg)

        return guarded

    async def _hang_up(self, channel: Channel, reason: str) -> None:
        await asyncio.sleep(CLOSE_AFTER_REFUSAL)
        await channel.close(reason)

    # ---- calls, metadata, listing ---------------------------------------------------------------------

    def _on_ops(self, msg: Message) -> Any:
        """A frame of calls goes to the executor's thread, and the next message is read at once: frames
        run back to back there, in order (one thread, first in, first out), while this thread receives
        the next ones. The messages that read what calls made wait for the calls before them (see
        _after_ops); so does a new frame when ``MAX_PENDING_FRAMES`` are still to run."""
        ops, channel, buffers = msg.header.get("ops"), msg.channel, msg.buffers
        the_loop = asyncio.get_running_loop()

        def report(failures: list[tuple[str, Any]] | DuetError) -> None:  # (loop thread)
            if isinstance(failures, DuetError):
                channel.send(error_header(failures), ordered=False)
                return
            for oid, error in failures:
                channel.send(
                    {"t": "failed", "o": oid, "kind": error.remote_type, "message": error.remote_message},
                    ordered=False,
                )

        # the frame counts as run once its failures are on their way, on this thread: a reply that waits
        # for it (see _after_ops) then leaves after them
        done: asyncio.Future[None] = the_loop.create_future()

        def finish(failures: list[tuple[str, Any]] | DuetError | None) -> None:  # (loop thread)
            try:
                if failures:
                    report(failures)
            finally:
                if not done.done():
                    done.set_result(None)

        def run() -> None:  # (executor thread)
            failures: list[tuple[str, Any]] | DuetError | None = None
            try:
                failures = self.executor.run_ops(ops, buffers)
            except DuetError as exc:
                failures = exc
            except Exception:  # noqa: BLE001 - an executor bug must not stop the frames after this one
                log.exception("running a frame of calls failed")
            finally:
                try:
                    the_loop.call_soon_threadsafe(finish, failures)
                except RuntimeError:  # the loop is closed: the session is over
                    pass

        pending = self._pending
        while pending and pending[0].done():
            pending.popleft()
        pending.append(done)
        try:
            self._pool.submit(run)
        except RuntimeError:  # the executor is shut down (the session is closing): nothing will run
            done.set_result(None)
            raise
        if len(pending) > MAX_PENDING_FRAMES:
            return pending.popleft()
        return None

    def _after_ops(self, handler: Callable[[Message], Any]) -> Callable[[Message], Any]:
        """``handler``, once every frame of calls received before its message has run."""

        def after(msg: Message) -> Any:
            pending = self._pending
            while pending and pending[0].done():
                pending.popleft()
            if not pending:
                return handler(msg)
            last = pending[-1]  # (the executor's one thread runs them in order: the last is the last done)

            async def later() -> None:
                await last
                result = handler(msg)
                if result is not None:
                    await result

            return later()

        return after

    def _on_meta(self, msg: Message) -> None:
        try:
            entry = self.store.lookup(msg.header.get("o"))
        except DuetError as exc:
            msg.reply(error_header(exc))
            return
        if entry.error is not None:
            msg.reply(error_header(entry.error))
            return
        meta = entry.public()
        obj = entry.obj
        meta["len"] = len(obj) if isinstance(obj, (list, tuple, dict, str)) else (meta["shape"] or [None])[0]
        msg.reply({"t": "meta", "meta": meta})

    def _on_store(self, msg: Message) -> None:
        msg.reply({"t": "store", "items": [e.public() for e in self.store.published()]})

    # ---- requests for values --------------------------------------------------------------------------

    def _on_req(self, msg: Message) -> None:
        try:
            entry, block, delete = self._checked_req(msg)
        except DuetError as exc:
            msg.reply(error_header(exc))
            return
        h, meta = msg.header, entry.meta
        timeout = float(h.get("timeout", 20))
        req = Request(
            kind="value",
            name=h.get("name", "")[:MAX_NAME],
            reason=h.get("reason", "")[:MAX_REASON],
            requester=self._requester(),
            object_id=entry.id,
            object_type=meta.get("type"),
            shape=tuple(meta["shape"]) if meta.get("shape") is not None else None,
            tags=entry.tags,
            sources=self.store.source_tags(entry),
            elements=int(meta.get("numel", 1) or 0),
            timeout_secs=-1 if timeout < 0 else min(timeout, MAX_TIMEOUT),
        )
        try:
            req = self.requests.submit(req, wait=block, decline=_DECLINE)
        except DuetError as exc:
            msg.reply(error_header(exc))
            return
        self._wait_for(req, msg, delete)

    def _checked_req(self, msg: Message) -> tuple[Entry, bool, bool]:
        """The object a request names and its block/delete flags; refuses fields of the wrong type, ids the
        scientist was never given, objects whose call failed, and requests over the session's quota."""
        h = msg.header
        if not isinstance(h.get("name", ""), str) or not isinstance(h.get("reason", ""), str):
            raise ProtocolError("a request's name and reason must be strings")
        block, delete = h.get("block", False), h.get("delete", False)
        if type(block) is not bool or type(delete) is not bool:
            raise ProtocolError("a request's block and delete must be true or false")
        timeout = h.get("timeout", 20)
        if type(timeout) not in (int, float) or not math.isfinite(timeout):
            raise ProtocolError("a request's timeout must be a finite number of seconds (negative: never)")
        if type(h.get("id")) is not int or msg.buffers:
            raise ProtocolError("a request has an integer id and carries no buffers")
        entry = self.store.lookup(h.get("o"))
        if entry.error is not None:
            raise entry.error
        limit = self.store.quotas.requests
        if self._requests_made >= limit:
            raise QuotaExceeded(
                f"this session has made its {limit} requests: ask the owner for a new session"
            )
        self._requests_made += 1
        return entry, block, delete

    def _wait_for(self, req: Request, msg: Message, delete: bool) -> None:
        waiters = self._waiting.setdefault(req.id, [])
        if len(waiters) >= MAX_WAITERS:
            msg.reply(error_header(QuotaExceeded(f"{MAX_WAITERS} identical requests are already waiting")))
            return
        waiters.append(_Waiter(msg, delete))
        if not req.pending:
            self._deliver(req)  # decided already (by a handler, as it arrived): answer at once

    def _on_decided(self, req: Request) -> None:
        if loop.in_loop_thread():
            self._deliver(req)  # decided by a handler as the request arrived: answer now, no extra hop
        else:
            loop.get_loop().call_soon_threadsafe(self._deliver, req)

    def _deliver(self, req: Request) -> None:
        """(loop thread) Answer everyone waiting on a decided request: one answer (one snapshot of the
        value) for all of them; the object is freed after if any asked ``delete_obj``."""
        waiting = self._waiting.pop(req.id, [])
        if req.kind == "join":
            self._deliver_join(req, waiting)
            return
        if not waiting:
            return
        header, buffers = self._answer(req)
        for waiter in waiting:
            try:
                waiter.reply(header, buffers, progress=transfer_bar(f"sending {req.name or req.object_type}"))
            except DuetError:
                log.info("could not answer request %s: the session is closed", req.id)
        if header.get("status") == "accepted" and any(w.delete for w in waiting):
            self.store.release(req.object_id)

    def _answer(self, req: Request) -> tuple[dict[str, Any], list[Any]]:
        if req.status != "accepted":
            return {"t": "value", "status": req.status, "reason": req.deny_reason}, []
        try:
            entry = self.store.lookup(req.object_id)
            buffers: list[Any] = []
            tree = codec.encode(entry.obj, buffers)
        except DuetError as exc:
            return error_header(exc), []
        except (TypeError, ValueError) as exc:
            return error_header(PermissionDenied(f"this value cannot be sent: {exc}")), []
        # a snapshot: later calls may change the object while the reply is still being sent
        return {"t": "value", "status": "accepted", "v": tree}, [bytes(b) for b in buffers]

    def _deliver_join(self, req: Request, waiting: list[_Waiter]) -> None:
        if req.status == "accepted":
            self._approved.set()
            for waiter in waiting:
                waiter.reply(self._welcome)
            return
        why = f"{req.status}: {req.deny_reason}" if req.deny_reason else req.status
        refusal = error_header(PermissionDenied(f"the owner did not let you join ({why})"))
        for waiter in waiting:
            waiter.reply(refusal)
        for channel in {id(w.channel): w.channel for w in waiting}.values():
            self._own(self._hang_up(channel, "the owner did not let the scientist join"))

    def _value_of(self, req: Request) -> Any:
        return self.store.lookup(req.object_id).obj


def _object_record(entry: Entry) -> dict[str, Any]:
    public = entry.public()
    return {
        "id": entry.id,
        "name": entry.name,
        "tags": list(entry.tags),
        "description": entry.description,
        "type": public["type"],
        "shape": public["shape"],
        "dtype": public["dtype"],
        "size_bytes": public["size_bytes"],
        "published_at": entry.created_at.isoformat(),
    }
