"""The owner's side of a session: store, executor, request queue, and the messages that reach them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import codec, loop
from .errors import DuetError, PermissionDenied, ProtocolError
from .remote.allowlist import Allowlist
from .remote.executor import Executor
from .remote.store import Quotas, Store
from .requests.queue import AlreadyDecided, Request, RequestQueue

if TYPE_CHECKING:
    from .transport import Message

__all__ = ["OwnerService"]

log = logging.getLogger("duet.owner")
_MAX_WAITING = 10_000


def error_header(exc: BaseException) -> dict[str, Any]:
    kind = getattr(exc, "remote_type", None) or type(exc).__name__
    message = getattr(exc, "remote_message", None)
    return {"t": "error", "kind": kind, "message": str(exc if message is None else message)[:1000]}


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
        self.store = Store(quotas, on_publish=(lambda e: db.record_object(_object_record(e))) if db else None)
        self.executor = Executor(self.store, allowlist)
        self.log = self.executor.log
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="duet-exec")
        self._waiting: dict[str, list[tuple[Message, bool]]] = {}
        self._approved = asyncio.Event()
        self._join_request: Request | None = None
        self._approve_join = approve_join
        if not approve_join:
            self._approved.set()
        self._tasks: set[asyncio.Task[None]] = set()

    def handlers(self) -> dict[str, Callable[[Message], Any]]:
        return {
            "hello": self._on_hello,
            "ops": self._guard(self._on_ops),
            "meta": self._guard(self._on_meta),
            "store": self._guard(self._on_store),
            "req": self._guard(self._on_req),
        }

    def start(self) -> None:
        task = asyncio.ensure_future(self._expiry())
        self._tasks.add(task)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.requests.close()

    async def _expiry(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            self.requests.expire_due()

    # ---- join approval -----------------------------------------------------------------------------

    def _on_hello(self, msg: Message) -> None:
        if not self._approve_join:
            msg.reply({"t": "welcome"})
            return
        if self._join_request is None:
            req = Request(kind="join", name="join", reason="asks to join the session", requester=self._requester())
            try:
                self._join_request = self.requests.submit(req)
            except DuetError as exc:
                msg.reply(error_header(exc))
                return
        self._wait_for(self._join_request, msg, True)

    def _guard(self, handler: Callable[[Message], Any]) -> Callable[[Message], Any]:
        def guarded(msg: Message) -> Any:
            if not self._approved.is_set():
                msg.reply(error_header(PermissionDenied("the owner has not approved your join yet")))
                return None
            return handler(msg)

        return guarded

    # ---- calls, metadata, listing ---------------------------------------------------------------------

    async def _on_ops(self, msg: Message) -> None:
        ops = msg.header.get("ops")
        try:
            failures = await asyncio.get_running_loop().run_in_executor(
                self._pool, self.executor.run_ops, ops, msg.buffers
            )
        except DuetError as exc:
            msg.channel.send(error_header(exc), ordered=False)
            return
        for oid, error in failures:
            msg.channel.send(
                {"t": "failed", "o": oid, "kind": error.remote_type, "message": error.remote_message}, ordered=False
            )

    def _on_meta(self, msg: Message) -> None:
        try:
            entry = self.store.get(msg.header.get("o"))
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
        h = msg.header
        try:
            entry = self.store.get(h.get("o"))
            timeout = h.get("timeout", 20)
            if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
                raise ProtocolError("a request's timeout must be a number")
        except DuetError as exc:
            msg.reply(error_header(exc))
            return
        if entry.error is not None:
            msg.reply(error_header(entry.error))
            return
        meta = entry.meta
        req = Request(
            kind="value",
            name=str(h.get("name", ""))[:200],
            reason=str(h.get("reason", ""))[:2000],
            requester=self._requester(),
            object_id=entry.id,
            object_type=meta.get("type"),
            shape=tuple(meta["shape"]) if meta.get("shape") is not None else None,
            tags=entry.tags,
            elements=int(meta.get("numel", 1) or 0),
            timeout_secs=-1 if timeout < 0 else min(float(timeout), 7 * 86400),
        )
        if len(self._waiting) >= _MAX_WAITING:
            msg.reply(error_header(PermissionDenied("too many requests are waiting for the owner")))
            return
        try:
            req = self.requests.submit(req)
        except DuetError as exc:
            msg.reply(error_header(exc))
            return
        self._wait_for(req, msg, bool(h.get("delete")))
        if req.pending and not h.get("block"):
            try:
                self.requests.deny(req, "no handler grants it (use request_block=True to ask the owner)", by="auto")
            except AlreadyDecided:
                pass  # the owner decided it in the meantime

    def _wait_for(self, req: Request, msg: Message, delete: bool) -> None:
        self._waiting.setdefault(req.id, []).append((msg, delete))
        if not req.pending:
            loop.get_loop().call_soon(self._deliver, req)

    def _on_decided(self, req: Request) -> None:
        loop.get_loop().call_soon_threadsafe(self._deliver, req)

    def _deliver(self, req: Request) -> None:
        waiting = [(m, d) for m, d in self._waiting.pop(req.id, []) if not m.channel.closed]
        if req.kind == "join":
            if req.status == "accepted":
                self._approved.set()
            for msg, _ in waiting:
                msg.reply({"t": "welcome"} if req.status == "accepted" else {"t": "error", "kind": "PermissionDenied",
                          "message": f"the owner did not let you join ({req.status}{': ' + req.deny_reason if req.deny_reason else ''})"})
            return
        for msg, delete in waiting:
            try:
                if req.status == "accepted":
                    entry = self.store.get(req.object_id)
                    buffers: list[Any] = []
                    tree = codec.encode(entry.obj, buffers)
                    # a snapshot: later calls may change the object while the reply is still being sent
                    msg.reply({"t": "value", "status": "accepted", "v": tree}, [bytes(b) for b in buffers])
                    if delete:
                        self.store.release(entry.id)
                else:
                    msg.reply({"t": "value", "status": req.status, "reason": req.deny_reason})
            except DuetError as exc:
                msg.reply(error_header(exc))
            except (TypeError, ValueError) as exc:
                msg.reply(error_header(PermissionDenied(f"this value cannot be sent: {exc}")))

    def _value_of(self, req: Request) -> Any:
        return self.store.get(req.object_id).obj


def _object_record(entry: Any) -> dict[str, Any]:
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
